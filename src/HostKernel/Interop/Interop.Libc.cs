using System.Runtime.InteropServices;

namespace CriuSharp.HostKernel;

/// <summary>
/// The host kernel's system calls, through glibc. x86_64 and arm64 Linux share every number used
/// here (they are libc entry points, not raw syscall numbers), except the register set layout,
/// which <see cref="Ptrace"/> reads as bytes.
/// </summary>
internal static unsafe partial class Interop
{
    internal static partial class Libc
    {
        private const string Name = "libc";

        internal const int O_RDONLY = 0, O_RDWR = 2, O_CLOEXEC = 0x80000;
        internal const int SIGKILL = 9, SIGCONT = 18, SIGSTOP = 19;
        internal const int EPERM = 1, ESRCH = 3, ENOSYS = 38, EFAULT = 14, EIO = 5, ENOTTY = 25, EINVAL = 22, EACCES = 13, ETIMEDOUT = 110;

        [StructLayout(LayoutKind.Sequential)]
        internal struct IoVec
        {
            public nint Base;
            public nuint Len;
        }

        /// <summary>process_vm_readv(2): copies from another process's address space without stopping it.</summary>
        [LibraryImport(Name, EntryPoint = "process_vm_readv", SetLastError = true)]
        internal static partial nint ProcessVmReadv(int pid, IoVec* local, nuint liovcnt, IoVec* remote, nuint riovcnt, nuint flags);

        [LibraryImport(Name, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int Open(string path, int flags);

        internal const int AT_FDCWD = -100;
        /// <summary>STATX_BASIC_STATS (include/uapi/linux/stat.h).</summary>
        internal const uint STATX_BASIC_STATS = 0x7ff;

        /// <summary>
        /// statx(2) into a 256-byte struct statx, whose layout is the same on every architecture
        /// (include/uapi/linux/stat.h); <see cref="LinuxHost"/> reads its fields by offset.
        /// </summary>
        [LibraryImport(Name, EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int Statx(int dirfd, string path, int flags, uint mask, byte* statxbuf);

        internal const int PROT_READ = 1, PROT_WRITE = 2, MAP_PRIVATE = 2, MAP_ANONYMOUS = 0x20, MADV_HUGEPAGE = 14;

        [LibraryImport(Name, EntryPoint = "mmap", SetLastError = true)]
        internal static partial void* Mmap(void* addr, nuint length, int prot, int flags, int fd, long offset);

        [LibraryImport(Name, EntryPoint = "munmap", SetLastError = true)]
        internal static partial int Munmap(void* addr, nuint length);

        [LibraryImport(Name, EntryPoint = "madvise", SetLastError = true)]
        internal static partial int Madvise(void* addr, nuint length, int advice);

        [LibraryImport(Name, EntryPoint = "close", SetLastError = true)]
        internal static partial int Close(int fd);

        [LibraryImport(Name, EntryPoint = "pread", SetLastError = true)]
        internal static partial nint Pread(int fd, void* buf, nuint count, long offset);

        [LibraryImport(Name, EntryPoint = "ioctl", SetLastError = true)]
        internal static partial int Ioctl(int fd, ulong request, void* arg);

        [LibraryImport(Name, EntryPoint = "ptrace", SetLastError = true)]
        internal static partial long Ptrace(long request, int pid, nint addr, nint data);

        [LibraryImport(Name, EntryPoint = "kill", SetLastError = true)]
        internal static partial int Kill(int pid, int sig);

        [LibraryImport(Name, EntryPoint = "geteuid")]
        internal static partial uint GetEuid();

        [LibraryImport(Name, EntryPoint = "strerror")]
        private static partial nint StrError(int errnum);

        internal static string ErrorText(int errno) => Marshal.PtrToStringUTF8(StrError(errno)) ?? $"errno {errno}";
    }
}

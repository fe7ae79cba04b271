using System.Runtime.InteropServices;

namespace CriuSharp.Bench;

/// <summary>
/// The host kernel's own interfaces, used as anchors: /proc/self/pagemap, clear_refs, and
/// userfaultfd + PAGEMAP_SCAN write-protection on a real buffer. x86_64 Linux only; every call
/// reports failure instead of throwing so a benchmark can say "anchor unavailable".
/// </summary>
internal static unsafe partial class RealKernel
{
    private const string Libc = "libc";
    private const long SysUserfaultfd = 323; // x86_64
    private const ulong UffdioApi = 0xc018aa3f;
    private const ulong UffdioRegister = 0xc020aa00;
    private const ulong PagemapScan = 0xc0606610;
    private const ulong FeatureWpUnpopulated = 1UL << 13, FeatureWpAsync = 1UL << 15;

    [LibraryImport(Libc, SetLastError = true)] private static partial int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);
    [LibraryImport(Libc, SetLastError = true)] private static partial int close(int fd);
    [LibraryImport(Libc, SetLastError = true)] private static partial nint pread(int fd, void* buf, nuint count, long offset);
    [LibraryImport(Libc, SetLastError = true)] private static partial nint write(int fd, void* buf, nuint count);
    [LibraryImport(Libc, SetLastError = true)] private static partial int ioctl(int fd, ulong request, void* arg);
    [LibraryImport(Libc, SetLastError = true)] private static partial long syscall(long number, long a1);
    [LibraryImport(Libc, SetLastError = true)] private static partial int madvise(void* addr, nuint len, int advice);

    public static bool IsX86Linux => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;

    /// <summary>A page-aligned, populated, non-THP buffer.</summary>
    public static byte* AllocPopulated(long bytes)
    {
        var p = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 2 << 20);
        madvise(p, (nuint)bytes, 15); // MADV_NOHUGEPAGE: measure 4 KiB entries
        for (long i = 0; i < bytes; i += 4096)
            p[i] = 1;
        return p;
    }

    public static int OpenPagemap() => open("/proc/self/pagemap", 0);

    /// <summary>Reads the pagemap entries of [buf, buf+bytes) into dst with one pread.</summary>
    public static bool ReadPagemap(int fd, byte* buf, long bytes, ulong* dst) =>
        pread(fd, dst, (nuint)(bytes / 4096 * 8), (long)((ulong)buf / 4096 * 8)) > 0;

    public static bool ClearRefs4()
    {
        int fd = open("/proc/self/clear_refs", 1);
        if (fd < 0) return false;
        byte c = (byte)'4';
        bool ok = write(fd, &c, 1) == 1;
        close(fd);
        return ok;
    }

    /// <summary>Registers [buf, buf+bytes) with an async uffd-wp context; returns the uffd or -1.</summary>
    public static int RegisterUffdWp(byte* buf, long bytes)
    {
        int uffd = (int)syscall(SysUserfaultfd, 0x80000 | 0x800); // O_CLOEXEC | O_NONBLOCK
        if (uffd < 0) return -1;
        ulong* api = stackalloc ulong[3];
        api[0] = 0xAA; api[1] = FeatureWpUnpopulated | FeatureWpAsync; api[2] = 0;
        if (ioctl(uffd, UffdioApi, api) != 0) { close(uffd); return -1; }
        ulong* reg = stackalloc ulong[4];
        reg[0] = (ulong)buf; reg[1] = (ulong)bytes; reg[2] = 2; reg[3] = 0; // MODE_WP
        if (ioctl(uffd, UffdioRegister, reg) != 0) { close(uffd); return -1; }
        return uffd;
    }

    /// <summary>PAGEMAP_SCAN over the buffer; returns the region count or -1.</summary>
    public static long Scan(int pagemapFd, byte* buf, long bytes, ulong flags, ulong categoryMask, ulong returnMask, ulong* vec, ulong vecLen)
    {
        ulong* arg = stackalloc ulong[12];
        arg[0] = 96; arg[1] = flags; arg[2] = (ulong)buf; arg[3] = (ulong)buf + (ulong)bytes; arg[4] = 0;
        arg[5] = (ulong)vec; arg[6] = vecLen; arg[7] = 0; arg[8] = 0; arg[9] = categoryMask; arg[10] = 0; arg[11] = returnMask;
        return ioctl(pagemapFd, PagemapScan, arg);
    }

    public static void Free(byte* p) => NativeMemory.AlignedFree(p);
}

using System.Runtime.InteropServices;

namespace CriuSharp.HostKernel;

/// <summary>
/// Reads another process's memory: process_vm_readv(2) (one call per up to 1024 iovecs), or,
/// where that is refused (it needs the same ptrace access mode as /proc/PID/mem but some
/// kernels lack CONFIG_CROSS_MEMORY_ATTACH), pread on /proc/PID/mem. Never writes.
/// </summary>
internal static unsafe class ProcessMemory
{
    private const int IovMax = 1024;

    /// <summary>Copies [va, va + dst.Length) of <paramref name="pid"/> into dst; throws on a short read.</summary>
    public static void Read(int pid, ulong va, Span<byte> dst)
    {
        fixed (byte* p = dst)
        {
            long done = 0;
            while (done < dst.Length)
            {
                var local = new Interop.Libc.IoVec { Base = (nint)(p + done), Len = (nuint)(dst.Length - done) };
                var remote = new Interop.Libc.IoVec { Base = (nint)(va + (ulong)done), Len = (nuint)(dst.Length - done) };
                nint n = Interop.Libc.ProcessVmReadv(pid, &local, 1, &remote, 1, 0);
                if (n <= 0)
                {
                    int e = n < 0 ? Marshal.GetLastPInvokeError() : Interop.Libc.EFAULT;
                    if (e is Interop.Libc.ENOSYS or Interop.Libc.EPERM)
                    {
                        ReadProcMem(pid, va + (ulong)done, dst[(int)done..]);
                        return;
                    }
                    throw e == Interop.Libc.EFAULT
                        ? new HostKernelException(ProcFs.Exists(pid) ? HostErrorKind.Io : HostErrorKind.Vanished,
                            $"cannot read memory at 0x{va + (ulong)done:x}: the range is no longer mapped", pid, e)
                        : HostKernelException.FromErrno(e, $"process_vm_readv at 0x{va + (ulong)done:x}", pid);
                }
                done += n;
            }
        }
    }

    /// <summary>
    /// Scatter read: remote ranges (page runs) into consecutive bytes of dst, batched IOV_MAX at a
    /// time, as CRIU's parasite-less page reader does.
    /// </summary>
    public static void ReadRuns(int pid, ReadOnlySpan<(ulong Va, int Bytes)> runs, Span<byte> dst)
    {
        var local = stackalloc Interop.Libc.IoVec[1];
        var remote = stackalloc Interop.Libc.IoVec[IovMax];
        fixed (byte* p = dst)
        {
            long off = 0;
            for (int i = 0; i < runs.Length;)
            {
                int n = Math.Min(IovMax, runs.Length - i);
                long batch = 0;
                for (int j = 0; j < n; j++)
                {
                    remote[j] = new Interop.Libc.IoVec { Base = (nint)runs[i + j].Va, Len = (nuint)runs[i + j].Bytes };
                    batch += runs[i + j].Bytes;
                }
                local[0] = new Interop.Libc.IoVec { Base = (nint)(p + off), Len = (nuint)batch };
                nint got = Interop.Libc.ProcessVmReadv(pid, local, 1, remote, (nuint)n, 0);
                if (got != batch)
                {
                    // Partial: fall back to one range at a time for a precise error.
                    long o = off;
                    for (int j = 0; j < n; j++)
                    {
                        Read(pid, runs[i + j].Va, dst.Slice((int)o, runs[i + j].Bytes));
                        o += runs[i + j].Bytes;
                    }
                }
                off += batch;
                i += n;
            }
        }
    }

    private static void ReadProcMem(int pid, ulong va, Span<byte> dst)
    {
        int fd = Interop.Libc.Open($"/proc/{pid}/mem", Interop.Libc.O_RDONLY | Interop.Libc.O_CLOEXEC);
        if (fd < 0)
            throw HostKernelException.FromErrno(Marshal.GetLastPInvokeError(), "cannot open /proc/PID/mem", pid);
        try
        {
            fixed (byte* p = dst)
            {
                long done = 0;
                while (done < dst.Length)
                {
                    nint n = Interop.Libc.Pread(fd, p + done, (nuint)(dst.Length - done), (long)(va + (ulong)done));
                    if (n <= 0)
                        throw HostKernelException.FromErrno(n < 0 ? Marshal.GetLastPInvokeError() : Interop.Libc.EIO, $"pread /proc/PID/mem at 0x{va + (ulong)done:x}", pid);
                    done += n;
                }
            }
        }
        finally
        {
            Interop.Libc.Close(fd);
        }
    }
}

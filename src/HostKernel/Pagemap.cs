using System.Runtime.InteropServices;

namespace CriuSharp.HostKernel;

/// <summary>
/// /proc/PID/pagemap of a host process (Documentation/admin-guide/mm/pagemap.rst): one 64-bit
/// entry per virtual page, read with pread at offset (va / page size) × 8, and the PAGEMAP_SCAN
/// ioctl on the same file descriptor (Linux 6.7, include/uapi/linux/fs.h).
/// </summary>
internal sealed unsafe class Pagemap : IDisposable
{
    public const ulong Present = 1UL << 63, Swapped = 1UL << 62, FilePage = 1UL << 61,
        Exclusive = 1UL << 56, SoftDirty = 1UL << 55, UffdWp = 1UL << 57, PfnMask = (1UL << 55) - 1;

    /// <summary>_IOWR('f', 16, struct pm_scan_arg): 96-byte argument.</summary>
    public const ulong PagemapScanIoctl = 0xc0606610;
    /// <summary>PAGE_IS_* categories of struct page_region.</summary>
    public const ulong PageIsWpAllowed = 1 << 0, PageIsWritten = 1 << 1, PageIsFile = 1 << 2,
        PageIsPresent = 1 << 3, PageIsSwapped = 1 << 4, PageIsPfnZero = 1 << 5, PageIsHuge = 1 << 6, PageIsSoftDirty = 1 << 7;

    [StructLayout(LayoutKind.Sequential)]
    public struct PmScanArg
    {
        public ulong Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages,
            CategoryInverted, CategoryMask, CategoryAnyofMask, ReturnMask;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PageRegion
    {
        public ulong Start, End, Categories;
    }

    private int _fd;
    public int Pid { get; }

    public Pagemap(int pid)
    {
        Pid = pid;
        _fd = Interop.Libc.Open($"/proc/{pid}/pagemap", Interop.Libc.O_RDONLY | Interop.Libc.O_CLOEXEC);
        if (_fd < 0)
        {
            int e = Marshal.GetLastPInvokeError();
            throw e == 2 ? new HostKernelException(ProcFs.Exists(pid) ? HostErrorKind.Io : HostErrorKind.NoSuchProcess, "no /proc/PID/pagemap", pid, e)
                : HostKernelException.FromErrno(e, "cannot open /proc/PID/pagemap", pid);
        }
    }

    /// <summary>Entries of the pages starting at <paramref name="va"/>, one per element of <paramref name="dst"/>.</summary>
    public void Read(ulong va, Span<ulong> dst, int pageShift = 12)
    {
        fixed (ulong* p = dst)
        {
            long off = (long)(va >> pageShift) * 8;
            nuint want = (nuint)dst.Length * 8, got = 0;
            while (got < want)
            {
                nint n = Interop.Libc.Pread(_fd, (byte*)p + got, want - got, off + (long)got);
                if (n < 0)
                    throw HostKernelException.FromErrno(Marshal.GetLastPInvokeError(), "pread /proc/PID/pagemap", Pid);
                if (n == 0)
                    break;
                got += (nuint)n;
            }
            if (got < want)
                dst[(int)(got / 8)..].Clear();
        }
    }

    /// <summary>
    /// One PAGEMAP_SCAN call; returns the number of regions written to <paramref name="vec"/> and
    /// the address where the walk stopped (walk_end). Throws Unsupported on ENOTTY (kernel before 6.7).
    /// </summary>
    public int Scan(ulong start, ulong end, ulong categoryMask, ulong anyof, ulong returnMask, Span<PageRegion> vec, out ulong walkEnd, ulong flags = 0, ulong inverted = 0, ulong maxPages = 0)
    {
        fixed (PageRegion* v = vec)
        {
            var arg = new PmScanArg
            {
                Size = (ulong)sizeof(PmScanArg), Flags = flags, Start = start, End = end,
                Vec = (ulong)v, VecLen = (ulong)vec.Length, CategoryMask = categoryMask,
                CategoryAnyofMask = anyof, ReturnMask = returnMask, CategoryInverted = inverted, MaxPages = maxPages,
            };
            int n = Interop.Libc.Ioctl(_fd, PagemapScanIoctl, &arg);
            if (n < 0)
            {
                int e = Marshal.GetLastPInvokeError();
                if (e == Interop.Libc.ENOTTY)
                    throw new HostKernelException(HostErrorKind.Unsupported, "the running kernel has no PAGEMAP_SCAN (Linux 6.7+)", Pid, e);
                throw HostKernelException.FromErrno(e, "PAGEMAP_SCAN", Pid);
            }
            walkEnd = arg.WalkEnd;
            return n;
        }
    }

    public void Dispose()
    {
        if (_fd >= 0)
            Interop.Libc.Close(_fd);
        _fd = -1;
    }
}

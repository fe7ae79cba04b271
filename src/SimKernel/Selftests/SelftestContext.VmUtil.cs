using System.Globalization;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using CriuSharp.SimKernel.Uffd;

namespace CriuSharp.SimKernel.Selftests;

/// <summary>
/// Thrown where a kernel selftest calls ksft_exit_fail_msg(): the whole binary stops with failure
/// and the checks after it never print a result.
/// </summary>
public sealed class SelftestFatalException(string message) : Exception(message);

/// <summary>
/// The parts of tools/testing/selftests/mm/vm_util.c, hugepage_settings.c and glibc's allocator that
/// the soft-dirty and pagemap_ioctl selftests lean on, re-expressed over the simulated "self" process.
/// </summary>
public sealed partial class SelftestContext
{
    private ProcFile? _pagemapFd;
    private int _scanProbe; // 0 = not probed yet, 1 = PAGEMAP_SCAN usable, -1 = not usable
    private ulong _heapTop;
    private readonly Dictionary<ulong, (ulong Base, ulong Len)> _mmapChunks = [];

    // ---- ksft plumbing ------------------------------------------------------------------

    /// <summary>ksft_exit_fail_msg: stop the whole binary.</summary>
    public static void Fatal(string message) => throw new SelftestFatalException(message);

    /// <summary>Records that the binary aborted; the checks it had not reached are simply absent, as in TAP.</summary>
    public void Aborted(string why) =>
        _checks.Add(new CheckResult("abort", "binary exited with failure before finishing its plan", CheckOutcome.Fail, why));

    /// <summary>ksft_exit_skip before any result: every planned check is reported skipped with the reason.</summary>
    public void SkipAll(IEnumerable<(string Id, string Description)> plan, string why)
    {
        foreach (var (id, d) in plan)
            Skip(id, d, why);
    }

    /// <summary>Runs a selftest body, turning ksft_exit_fail_msg and unexpected kernel errors into an abort record.</summary>
    public void RunBody(Action body)
    {
        try
        {
            body();
        }
        catch (SelftestFatalException e)
        {
            Aborted(e.Message);
        }
        catch (KernelException e)
        {
            Aborted($"unexpected error: {e.Message}");
        }
    }

    // ---- files ----------------------------------------------------------------------------

    /// <summary>The test's own open("/proc/self/pagemap", O_RDONLY), opened once as the selftests do.</summary>
    public ProcFile PagemapFd
    {
        get
        {
            if (_pagemapFd is null)
            {
                var r = Kernel.Proc.Open(Self.Pid, "pagemap", OpenMode.ReadOnly, out _pagemapFd);
                if (!r.Ok)
                    Fatal($"open /proc/self/pagemap: {r.Error}");
            }
            return _pagemapFd!;
        }
    }

    /// <summary>Reads /proc/self/smaps through open()/read(), as the C helpers do with fopen/fgets.</summary>
    public string ReadSmaps()
    {
        Kernel.Proc.Open(Self.Pid, "smaps", OpenMode.ReadOnly, out var f).OrThrow("open smaps");
        var sb = new System.Text.StringBuilder();
        var buf = new byte[4096];
        while (true)
        {
            var r = f!.Read(buf);
            if (!r.Ok || r.Value == 0)
                break;
            sb.Append(System.Text.Encoding.ASCII.GetString(buf, 0, (int)r.Value));
        }
        return sb.ToString();
    }

    /// <summary>
    /// The smaps block of the VMA that starts exactly at <paramref name="va"/>: the helpers search for a
    /// line beginning with the address printed as <c>%08lx-</c>; null when no VMA starts there.
    /// </summary>
    public string? SmapsBlockStartingAt(ulong va)
    {
        string smaps = ReadSmaps();
        string prefix = va.ToString("x8", CultureInfo.InvariantCulture) + "-";
        int at = smaps.StartsWith(prefix, StringComparison.Ordinal) ? 0 : smaps.IndexOf("\n" + prefix, StringComparison.Ordinal);
        if (at < 0)
            return null;
        if (at > 0)
            at++;
        int vmFlags = smaps.IndexOf("\nVmFlags:", at, StringComparison.Ordinal);
        int eol = vmFlags < 0 ? smaps.Length : smaps.IndexOf('\n', vmFlags + 1);
        return smaps[at..(eol < 0 ? smaps.Length : eol)];
    }

    /// <summary>
    /// softdirty_supported(): map one fresh anonymous page and look for the exact token "sd" in the
    /// VmFlags of the VMA starting there (R3). Exits with failure when no VMA starts at the page.
    /// </summary>
    public bool SoftdirtySupported()
    {
        ulong ps = (ulong)PageSize;
        ulong addr = Mmap(ps, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        if (addr == MapFailed)
            Fatal("mmap failed in softdirty_supported");
        string? block = SmapsBlockStartingAt(addr);
        if (block is null)
            Fatal($"no smaps entry starts at {addr:x}");
        int f = block!.IndexOf("VmFlags:", StringComparison.Ordinal);
        bool sd = f >= 0 && block[(f + "VmFlags:".Length)..].Split(' ', '\n', StringSplitOptions.RemoveEmptyEntries).Contains("sd");
        Self.Munmap(addr, ps);
        return sd;
    }

    /// <summary>
    /// check_huge_anon() for a PMD-sized huge page: the smaps block of the VMA starting at
    /// <paramref name="addr"/> must show <c>AnonHugePages:</c> equal to nr huge pages in kB.
    /// </summary>
    public bool CheckHugeAnon(ulong addr, int nr, ulong hpage)
    {
        if (hpage != HugePageSize)
            return false;
        string? block = SmapsBlockStartingAt(addr);
        if (block is null)
            return false;
        int at = block.IndexOf("\nAnonHugePages:", StringComparison.Ordinal);
        if (at < 0)
            return false;
        string rest = block[(at + "\nAnonHugePages:".Length)..].TrimStart();
        string num = new(rest.TakeWhile(char.IsAsciiDigit).ToArray());
        return ulong.TryParse(num, NumberStyles.None, CultureInfo.InvariantCulture, out ulong kb)
               && kb == (ulong)nr * (hpage / 1024);
    }

    /// <summary>"THP enabled" as the selftests read it: transparent_hugepage/enabled shows [always] or [madvise].</summary>
    public bool ThpEnabled => Kernel.ThpMode != ThpMode.Never && HugePageSize != 0;

    // ---- soft-dirty helpers -----------------------------------------------------------------

    /// <summary>
    /// pagemap_is_softdirty() with the PAGEMAP_SCAN cross-check of vm_util.c: bit 55 from
    /// pagemap, and — when the kernel has PAGEMAP_SCAN — PAGE_IS_SOFT_DIRTY for the same page through
    /// the generic (anyof) path. A disagreement ends the binary (R1 must equal R2).
    /// </summary>
    public bool PagemapIsSoftDirtyChecked(ulong va)
    {
        bool m = PagemapIsSoftDirty(va);
        ulong ps = (ulong)PageSize;
        if (_scanProbe == 0)
        {
            // Support probe: a non-NULL but invalid output pointer must be refused with EFAULT before
            // the walk. The simulator models a user pointer by the span handed in, so an empty span
            // with vec_len 1 stands for a pointer the kernel cannot write to.
            var probe = PmScanArg.Create(va, va + ps, vecLen: 1, categoryMask: 0, returnMask: 0xFF, anyof: 0xFF);
            probe.Vec = ulong.MaxValue;
            var r = PagemapFd.Ioctl(PageCategory.PagemapScanIoctl, ref probe, Span<PageRegion>.Empty);
            if (r.Ok)
                Fatal("PAGEMAP_SCAN with an invalid output buffer succeeded unexpectedly");
            _scanProbe = r.Error == Errno.EFAULT ? 1 : -1;
        }
        if (_scanProbe > 0)
        {
            var arg = PmScanArg.Create(va, va + ps, vecLen: 1, categoryMask: 0, returnMask: 0xFF, anyof: 0xFF);
            Span<PageRegion> vec = stackalloc PageRegion[1];
            var r = PagemapFd.Ioctl(PageCategory.PagemapScanIoctl, ref arg, vec);
            if (!r.Ok)
                Fatal($"PAGEMAP_SCAN failed: {r.Error}");
            ulong cats = r.Value == 0 ? 0 : vec[0].Categories;
            bool s = (cats & PageCategory.SoftDirty) != 0;
            if (m != s)
                Fatal($"read and ioctl return unmatched results for {va:x}: pagemap {m}, PAGEMAP_SCAN {s}");
        }
        return m;
    }

    /// <summary>
    /// Whether the PAGEMAP_SCAN half of the cross-check runs: null before the first soft-dirty read,
    /// then true when the support probe failed with EFAULT as a kernel with PAGEMAP_SCAN does.
    /// </summary>
    public bool? ScanCrossCheckActive => _scanProbe == 0 ? null : _scanProbe > 0;

    // ---- glibc allocator stand-ins ------------------------------------------------------------

    /// <summary>glibc's mmap threshold: larger requests get a mapping of their own.</summary>
    public const ulong MmapThreshold = 128 * 1024;

    /// <summary>
    /// aligned_alloc / memalign as glibc serves them: small blocks come from the brk heap (grown in
    /// 132 KiB steps, which marks the heap VMA soft-dirty, S10.3); large ones from a private anonymous
    /// mapping big enough to hold an aligned block, so the block sits inside a larger VMA.
    /// </summary>
    public ulong AlignedAlloc(ulong align, ulong size)
    {
        ulong ps = (ulong)PageSize;
        if (size >= MmapThreshold)
        {
            ulong len = (size + align + 64 + ps - 1) & ~(ps - 1);
            ulong b = Mmap(len, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
            if (b == MapFailed)
                return 0;
            ulong p = AlignUp(b + 16, align);
            _mmapChunks[p] = (b, len);
            return p;
        }
        var mm = Self.Mm;
        if (_heapTop == 0)
            _heapTop = mm.Brk;
        ulong ptr = AlignUp(_heapTop + 16, align);
        ulong need = ptr + size;
        if (need > mm.Brk)
        {
            ulong grow = Math.Max(need - mm.Brk, 0x21000UL);
            ulong want = (mm.Brk + grow + ps - 1) & ~(ps - 1);
            if (Self.Brk(want) != want)
                return 0;
        }
        _heapTop = need;
        return ptr;
    }

    /// <summary>free(): a block with its own mapping is unmapped whole; heap blocks stay in the heap.</summary>
    public void Free(ulong ptr)
    {
        if (_mmapChunks.Remove(ptr, out var c))
            Self.Munmap(c.Base, c.Len);
    }

    public static ulong AlignUp(ulong v, ulong align) => (v + align - 1) & ~(align - 1);

    /// <summary>A regular file of the simulated filesystem filled with <paramref name="contents"/> (open + write loop).</summary>
    public SimFile CreateFile(string path, ReadOnlySpan<byte> contents) =>
        Kernel.Fs.Lookup(path) ?? Kernel.Fs.Create(path, contents);

    /// <summary>memfd_create without hugetlb, then ftruncate and write(): a shmem object holding the bytes.</summary>
    public SimFile CreateMemfd(ReadOnlySpan<byte> contents)
    {
        var f = Kernel.Fs.CreateShmem(contents.Length);
        int ps = PageSize;
        for (long idx = 0; idx * ps < contents.Length; idx++)
        {
            long pfn = Kernel.Fs.GetPage(f, idx);
            if (pfn < 0)
                Fatal("memfd write: out of memory");
            contents.Slice((int)(idx * ps), (int)Math.Min(ps, contents.Length - idx * ps)).CopyTo(Kernel.Memory.PageMut(pfn));
        }
        return f;
    }

    // ---- userfaultfd -----------------------------------------------------------------------

    /// <summary>UFFD_API_RANGE_IOCTLS bit for UFFDIO_WRITEPROTECT and the command number the test masks with.</summary>
    public const ulong UffdioWriteprotectCmd = 0xC018AA06;
}

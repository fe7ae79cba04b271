using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using CriuSharp.SimKernel.Uffd;

namespace CriuSharp.Bench;

/// <summary>
/// The simulated kernel against the host kernel, per 4 KiB page, over 1 GiB (262,144 pages).
/// Each category's baseline is the real kernel doing the same thing in this run; BenchmarkDotNet's
/// Ratio column is the figure (targets in the README's Measured table, with the host kernel measured alongside):
///   pagemap      read 1 GiB of populated memory        target ≤ 15 ns/page (ratio ≤ ~1), aim 5
///   scan         PAGEMAP_SCAN, 1 % written, uffd-wp    target ≤ 2 ns per page of range
///   clear_refs   "4" over 1 GiB                        target ≤ 2 ns/page
///   wp_fault     first write after arming              target ≤ 100 ns (real kernel ≈ 1 µs)
/// Metadata per page is printed from GlobalSetup (target ≤ 16 bytes beyond page contents).
/// </summary>
[Config(typeof(ImageFormatBenchmarks.InProcessShortConfig))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public unsafe class KernelBenchmarks
{
    private const long Bytes = 1L << 30;
    private const int Pages = (int)(Bytes / 4096);
    private const int WrittenStride = 100; // 1 % of pages

    private Kernel _k = null!;
    private SimTask _t = null!;
    private ulong _sim;
    private ulong[] _entries = new ulong[Pages];
    private PageRegion[] _regions = new PageRegion[Pages / WrittenStride + 16];
    private Userfaultfd _uffd = null!;

    private byte* _real;
    private int _pagemapFd = -1;
    private ulong* _realEntries;
    private ulong* _realVec;
    private bool _realUffd;

    [GlobalSetup]
    public void Setup()
    {
        long before = GC.GetTotalMemory(true);
        _k = new Kernel(new KernelConfig { MemoryBytes = 4L << 30, Thp = ThpMode.Never });
        _t = _k.Spawn("bench");
        _sim = (ulong)_t.Mmap(0, Bytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous).OrThrow("mmap");
        _t.Madvise(_sim, Bytes, Madvise.PopulateWrite).OrThrow("populate");
        long after = GC.GetTotalMemory(true);
        long contents = _k.Memory.ContentBytesAllocated;
        double perPage = (after - before - contents) / (double)Pages;
        Console.WriteLine($"// metadata beyond page contents: {perPage:F1} bytes per 4 KiB page (target <= 16); " +
                          $"content chunks {contents >> 20} MiB for {Bytes >> 20} MiB of pages");

        _t.OpenUserfaultfd(out var u).OrThrow("uffd");
        _uffd = u!;
        _uffd.ApiHandshake(UffdConstants.Api, UffdConstants.FeatureWpAsync | UffdConstants.FeatureWpUnpopulated, out _).OrThrow("api");
        _uffd.Register(_sim, Bytes, UffdConstants.RegisterModeWp).OrThrow("register");

        if (RealKernel.IsX86Linux)
        {
            _real = RealKernel.AllocPopulated(Bytes);
            _pagemapFd = RealKernel.OpenPagemap();
            _realEntries = (ulong*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)Pages * 8);
            _realVec = (ulong*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)_regions.Length * 24);
            _realUffd = RealKernel.RegisterUffdWp(_real, Bytes) >= 0;
            Console.WriteLine($"// real-kernel anchors: pagemap fd {_pagemapFd}, uffd-wp async {(_realUffd ? "available" : "unavailable")}");
        }
    }

    private void SimArmAndDirtyOnePercent()
    {
        var arm = PmScanArg.Create(_sim, _sim + (ulong)Bytes, 0, 0, 0, flags: PageCategory.ScanWpMatching);
        _k.Proc.PagemapScan(_t.Pid, ref arm, []).OrThrow("arm");
        for (int i = 0; i < Pages; i += WrittenStride)
            _t.StoreU64(_sim + (ulong)i * 4096, (ulong)i);
    }

    private void RealArmAndDirtyOnePercent()
    {
        RealKernel.Scan(_pagemapFd, _real, Bytes, 1, 0, 0, null, 0);
        for (int i = 0; i < Pages; i += WrittenStride)
            _real[(long)i * 4096] = 2;
    }

    // ---- pagemap ------------------------------------------------------------------------

    [BenchmarkCategory("pagemap"), Benchmark(Baseline = true, OperationsPerInvoke = Pages)]
    public bool Pagemap_RealKernel() => RealKernel.ReadPagemap(_pagemapFd, _real, Bytes, _realEntries);

    [BenchmarkCategory("pagemap"), Benchmark(OperationsPerInvoke = Pages)]
    public ulong Pagemap_Simulated()
    {
        Pagemap.Read(_t.Mm, _sim, _entries, PagemapLayout.Modern);
        return _entries[Pages - 1];
    }

    // ---- PAGEMAP_SCAN, 1 % written, read and re-arm -----------------------------------

    [IterationSetup(Targets = [nameof(Scan_RealKernel)])]
    public void ScanRealSetup() { if (_realUffd) RealArmAndDirtyOnePercent(); }

    [IterationSetup(Targets = [nameof(Scan_Simulated)])]
    public void ScanSimSetup() => SimArmAndDirtyOnePercent();

    [BenchmarkCategory("scan"), Benchmark(Baseline = true, OperationsPerInvoke = Pages)]
    public long Scan_RealKernel() => _realUffd
        ? RealKernel.Scan(_pagemapFd, _real, Bytes, 3, 2, 2, _realVec, (ulong)_regions.Length)
        : -1;

    [BenchmarkCategory("scan"), Benchmark(OperationsPerInvoke = Pages)]
    public long Scan_Simulated()
    {
        var a = PmScanArg.Create(_sim, _sim + (ulong)Bytes, (ulong)_regions.Length, PageCategory.Written, PageCategory.Written,
            flags: PageCategory.ScanWpMatching | PageCategory.ScanCheckWpAsync);
        return _k.Proc.PagemapScan(_t.Pid, ref a, _regions).Value;
    }

    // ---- clear_refs 4 -------------------------------------------------------------------

    [BenchmarkCategory("clear_refs"), Benchmark(Baseline = true, OperationsPerInvoke = Pages)]
    public bool ClearRefs_RealKernel() => RealKernel.ClearRefs4();

    [BenchmarkCategory("clear_refs"), Benchmark(OperationsPerInvoke = Pages)]
    public long ClearRefs_Simulated() => _k.Proc.ClearRefs(_t.Pid, "4").Value;

    // ---- write-protect fault: one write per page after arming ---------------------------

    [IterationSetup(Targets = [nameof(WpFault_RealKernel)])]
    public void WpRealSetup() { if (_realUffd) RealKernel.Scan(_pagemapFd, _real, Bytes, 1, 0, 0, null, 0); }

    [IterationSetup(Targets = [nameof(WpFault_Simulated)])]
    public void WpSimSetup()
    {
        var arm = PmScanArg.Create(_sim, _sim + (ulong)Bytes, 0, 0, 0, flags: PageCategory.ScanWpMatching);
        _k.Proc.PagemapScan(_t.Pid, ref arm, []).OrThrow("arm");
    }

    [BenchmarkCategory("wp_fault"), Benchmark(Baseline = true, OperationsPerInvoke = Pages)]
    public void WpFault_RealKernel()
    {
        if (!_realUffd) return;
        for (long i = 0; i < Bytes; i += 4096)
            _real[i] = 3;
    }

    [BenchmarkCategory("wp_fault"), Benchmark(OperationsPerInvoke = Pages)]
    public void WpFault_Simulated()
    {
        for (ulong i = 0; i < (ulong)Bytes; i += 4096)
            _t.StoreU64(_sim + i, i);
    }
}

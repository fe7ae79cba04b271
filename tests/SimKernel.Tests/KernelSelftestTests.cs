using System.Collections.Concurrent;
using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Selftests;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// The kernel's mm selftests soft-dirty.c and pagemap_ioctl.c, re-expressed as simulator scenarios,
/// run per architecture and kernel profile. Each report is computed once and shared by the tests.
/// </summary>
public sealed class KernelSelftestTests
{
    private static readonly ConcurrentDictionary<(string Test, string Arch, string Kernel, ThpMode Thp, bool ZeroPage), Lazy<SelftestReport>> s_reports = new();

    private static SelftestReport Run(string test, ArchProfile arch, KernelVersion kernel, ThpMode thp = ThpMode.Madvise, bool useZeroPage = true) =>
        s_reports.GetOrAdd((test, arch.Name, kernel.Name, thp, useZeroPage), _ => new Lazy<SelftestReport>(() =>
            SelftestCatalog.Find(test)!.Run(new KernelConfig { Arch = arch, Version = kernel, Thp = thp, ThpUseZeroPage = useZeroPage }))).Value;

    private static string Describe(IEnumerable<CheckResult> checks) =>
        string.Join("\n", checks.Select(c => $"  {c.Outcome} {c.Id} {c.Description}: {c.Detail}"));

    private static void AssertNoFailures(SelftestReport r)
    {
        var failed = r.Checks.Where(c => c.Outcome == CheckOutcome.Fail).ToList();
        Assert.True(failed.Count == 0, $"{r.Name} on {r.Arch}/{r.Kernel}: {failed.Count} failed\n{Describe(failed)}");
    }

    private static HashSet<string> Ids(SelftestReport r, CheckOutcome o) =>
        r.Checks.Where(c => c.Outcome == o).Select(c => c.Id).ToHashSet();

    private static IEnumerable<string> Range(string prefix, int from, int to) =>
        Enumerable.Range(from, to - from + 1).Select(i => prefix + i);

    /// <summary>The report lists every planned check once, in the real binary's order (no abort).</summary>
    private static void AssertFollowsPlan(SelftestReport r, IReadOnlyList<(string Id, string Description)> plan)
    {
        Assert.True(r.Checks.Select(c => c.Id).SequenceEqual(plan.Select(p => p.Id)),
            $"{r.Name} on {r.Arch}/{r.Kernel} did not report its plan in order:\n{Describe(r.Checks)}");
    }

    // ---- the catalog --------------------------------------------------------------------

    [Fact]
    public void Catalog_lists_both_translated_selftests()
    {
        Assert.NotNull(SelftestCatalog.Find("soft-dirty"));
        Assert.NotNull(SelftestCatalog.Find("pagemap-ioctl"));
        Assert.Equal(19, SoftDirtySelftest.Plan.Count);
        Assert.Equal(119, PagemapIoctlSelftest.Plan.Count);
        Assert.Equal(Range("D", 1, 19), SoftDirtySelftest.Plan.Select(p => p.Id));
        Assert.Equal(Range("P", 1, 119), PagemapIoctlSelftest.Plan.Select(p => p.Id));
    }

    [Theory]
    [InlineData("modern", true)]
    [InlineData("linux-6.12", true)]
    [InlineData("2013", false)]
    public void Soft_dirty_reads_are_cross_checked_through_PAGEMAP_SCAN_where_it_exists(string kernel, bool active)
    {
        var t = new SelftestContext(new KernelConfig { Arch = ArchProfile.X86_64, Version = KernelVersion.Parse(kernel) }, "probe");
        ulong ps = (ulong)t.PageSize;
        ulong a = t.Mmap(ps, CriuSharp.KernelApi.Prot.Read | CriuSharp.KernelApi.Prot.Write, CriuSharp.KernelApi.MapFlags.Private | CriuSharp.KernelApi.MapFlags.Anonymous);
        Assert.Null(t.ScanCrossCheckActive);
        // A fresh VMA reads dirty through both interfaces on kernels with VM_SOFTDIRTY (S10.1).
        Assert.Equal(KernelVersion.Parse(kernel).HasVmSoftDirty, t.PagemapIsSoftDirtyChecked(a));
        Assert.Equal(active, t.ScanCrossCheckActive);
    }

    // ---- x86_64, modern (6.18 with the sticky merge) -------------------------------------

    [Fact]
    public void SoftDirty_x86_64_modern_every_check_passes()
    {
        var r = Run("soft-dirty", ArchProfile.X86_64, KernelVersion.Modern);
        AssertFollowsPlan(r, SoftDirtySelftest.Plan);
        AssertNoFailures(r);
        Assert.Equal(19, r.Passed);
    }

    [Fact]
    public void PagemapIoctl_x86_64_modern_every_non_skipped_check_passes()
    {
        var r = Run("pagemap-ioctl", ArchProfile.X86_64, KernelVersion.Modern);
        AssertFollowsPlan(r, PagemapIoctlSelftest.Plan);
        AssertNoFailures(r);
        // Nothing skips: the hugetlb memory types (P54-P71) and the MADV_COLLAPSE-based P119 run.
        Assert.Empty(Ids(r, CheckOutcome.Skip));
        Assert.Equal(119, r.Passed);
    }

    [Fact]
    public void PagemapIoctl_transact_test_sees_double_reports_but_never_loses_a_write()
    {
        var r = Run("pagemap-ioctl", ArchProfile.X86_64, KernelVersion.Modern);
        var p100 = r.Checks.Single(c => c.Id == "P100");
        Assert.Equal(CheckOutcome.Pass, p100.Outcome);
        // The seeded interleaving puts the concurrent scan between a fault and its store in some
        // rounds, so FP6 double reports (and their extra faults) do occur and are tolerated.
        Assert.Matches(@"Extra pages [1-9]\d* \(", p100.Description);
        Assert.Equal("transact_test count 192", r.Checks.Single(c => c.Id == "P98").Description);
    }

    [Fact]
    public void Reports_are_deterministic()
    {
        var config = new KernelConfig { Arch = ArchProfile.X86_64, Version = KernelVersion.Modern };
        var a = SelftestCatalog.Find("pagemap-ioctl")!.Run(config);
        var b = Run("pagemap-ioctl", ArchProfile.X86_64, KernelVersion.Modern);
        Assert.Equal(b.Checks, a.Checks);
    }

    // ---- arm64: no soft-dirty, uffd-wp async works ---------------------------------------

    [Fact]
    public void SoftDirty_arm64_is_skipped_like_the_real_test_without_sd()
    {
        var r = Run("soft-dirty", ArchProfile.Arm64, KernelVersion.Modern);
        AssertFollowsPlan(r, SoftDirtySelftest.Plan);
        Assert.All(r.Checks, c => Assert.Equal(CheckOutcome.Skip, c.Outcome));
        Assert.Contains("no 'sd'", r.Checks[0].Detail);
    }

    [Fact]
    public void PagemapIoctl_arm64_written_tracking_passes()
    {
        var r = Run("pagemap-ioctl", ArchProfile.Arm64, KernelVersion.Modern);
        AssertFollowsPlan(r, PagemapIoctlSelftest.Plan);
        AssertNoFailures(r);
        Assert.Equal(119, r.Passed);
        // The WRITTEN checks proper: argument/walk_end/limit tests, anonymous, hugetlb and file memory
        // types, THP units, test_simple, mprotect, transact, masks, PFNZERO and the unpopulated range.
        var passed = Ids(r, CheckOutcome.Pass);
        Assert.Superset(Range("P", 1, 119).ToHashSet(), passed);
    }

    // ---- ppc64: soft-dirty with 64 KiB pages, no uffd-wp ---------------------------------

    [Fact]
    public void SoftDirty_ppc64_passes_with_64k_pages()
    {
        Assert.Equal(65536, ArchProfile.Ppc64.PageSize);
        var r = Run("soft-dirty", ArchProfile.Ppc64, KernelVersion.Modern);
        AssertFollowsPlan(r, SoftDirtySelftest.Plan);
        AssertNoFailures(r);
        // Including the THP checks with a 16 MiB PMD on the 64K hash MMU.
        Assert.Equal(19, r.Passed);
    }

    [Fact]
    public void PagemapIoctl_ppc64_is_skipped_because_uffd_wp_is_missing()
    {
        var r = Run("pagemap-ioctl", ArchProfile.Ppc64, KernelVersion.Modern);
        AssertFollowsPlan(r, PagemapIoctlSelftest.Plan);
        Assert.All(r.Checks, c => Assert.Equal(CheckOutcome.Skip, c.Outcome));
        Assert.Contains("Failed to initialize userfaultfd", r.Checks[0].Detail);
    }

    // ---- linux-6.12: no sticky VM_SOFTDIRTY merge (FN1) ------------------------------------

    [Fact]
    public void SoftDirty_linux612_loses_VM_SOFTDIRTY_on_merge_FN1()
    {
        var r = Run("soft-dirty", ArchProfile.X86_64, KernelVersion.Linux612);
        AssertFollowsPlan(r, SoftDirtySelftest.Plan);
        var sticky = Range("D", 16, 19).ToHashSet();
        Assert.True(sticky.SetEquals(Ids(r, CheckOutcome.Fail)),
            $"expected exactly the sticky-merge checks D16-D19 to fail:\n{Describe(r.Checks.Where(c => c.Outcome != CheckOutcome.Pass))}");
        Assert.Equal(15, r.Passed);
    }

    [Fact]
    public void PagemapIoctl_linux612_passes_because_uffd_wp_state_is_per_entry()
    {
        var r = Run("pagemap-ioctl", ArchProfile.X86_64, KernelVersion.Linux612);
        AssertNoFailures(r);
        Assert.Equal(119, r.Passed);
    }

    // ---- the 2013 series: no PAGEMAP_SCAN, no userfaultfd -----------------------------------

    [Fact]
    public void PagemapIoctl_series2013_is_skipped()
    {
        var r = Run("pagemap-ioctl", ArchProfile.X86_64, KernelVersion.Series2013);
        AssertFollowsPlan(r, PagemapIoctlSelftest.Plan);
        Assert.All(r.Checks, c => Assert.Equal(CheckOutcome.Skip, c.Outcome));
        Assert.Contains("ENOTTY", r.Checks[0].Detail);
    }

    [Fact]
    public void SoftDirty_series2013_is_skipped_without_VM_SOFTDIRTY()
    {
        var r = Run("soft-dirty", ArchProfile.X86_64, KernelVersion.Series2013);
        Assert.All(r.Checks, c => Assert.Equal(CheckOutcome.Skip, c.Outcome));
    }

    // ---- THP configuration -----------------------------------------------------------------

    [Fact]
    public void Thp_never_skips_the_hugepage_checks_and_fails_only_the_huge_zero_page_check()
    {
        var sd = Run("soft-dirty", ArchProfile.X86_64, KernelVersion.Modern, ThpMode.Never);
        AssertNoFailures(sd);
        Assert.True(new HashSet<string> { "D4", "D5" }.SetEquals(Ids(sd, CheckOutcome.Skip)), Describe(sd.Checks));

        // With use_zero_page = 1 but THP disabled only one small zero page is mapped,
        // so P117 fails rather than skips; everything else still passes on 4 KiB pages.
        var pi = Run("pagemap-ioctl", ArchProfile.X86_64, KernelVersion.Modern, ThpMode.Never);
        Assert.Equal(["P117"], Ids(pi, CheckOutcome.Fail));
    }

    [Fact]
    public void Without_the_huge_zero_page_P117_is_skipped()
    {
        var r = Run("pagemap-ioctl", ArchProfile.X86_64, KernelVersion.Modern, useZeroPage: false);
        AssertNoFailures(r);
        Assert.Equal(CheckOutcome.Skip, r.Checks.Single(c => c.Id == "P117").Outcome);
    }
}

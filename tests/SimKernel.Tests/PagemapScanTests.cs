using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using CriuSharp.SimKernel.Uffd;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>PAGEMAP_SCAN matching, limits, walk_end and errors (Documentation/admin-guide/mm/pagemap.rst, fs/proc/task_mmu.c).</summary>
public class PagemapScanTests
{
    private static (Sim s, ulong m, Userfaultfd uffd) Armed(int pages = 16)
    {
        var s = new Sim();
        ulong m = s.Anon((ulong)pages);
        s.T.OpenUserfaultfd(out var uffd).OrThrow("uffd");
        uffd!.ApiHandshake(UffdConstants.Api, UffdConstants.FeatureWpAsync | UffdConstants.FeatureWpUnpopulated, out _).OrThrow("api");
        uffd.Register(m, (ulong)pages * s.PS, UffdConstants.RegisterModeWp).OrThrow("register");
        var arm = PmScanArg.Create(m, m + (ulong)pages * s.PS, 0, 0, 0, flags: PageCategory.ScanWpMatching | PageCategory.ScanCheckWpAsync);
        s.K.Proc.PagemapScan(s.T.Pid, ref arm, []).OrThrow("arm");
        return (s, m, uffd);
    }

    private static (long n, PageRegion[] vec, ulong walkEnd) Written(Sim s, ulong m, int pages, ulong vecLen, ulong maxPages = 0)
    {
        var vec = new PageRegion[Math.Max(1, (int)vecLen)];
        var a = PmScanArg.Create(m, m + (ulong)pages * s.PS, vecLen, PageCategory.Written, PageCategory.Written, maxPages: maxPages);
        var r = s.K.Proc.PagemapScan(s.T.Pid, ref a, vec);
        return (r.OrThrow("scan"), vec, a.WalkEnd);
    }

    [Fact]
    public void SixteenWrittenPages_MaxPages5_OneRegion_WalkEndAtPage5()
    {
        var (s, m, _) = Armed();
        for (ulong i = 0; i < 16; i++) s.W(m + i * s.PS);
        var (n, vec, walkEnd) = Written(s, m, 16, 16, 5);
        Assert.Equal(1, n);
        Assert.Equal(new PageRegion(m, m + 5 * s.PS, PageCategory.Written), vec[0]);
        Assert.Equal(m + 5 * s.PS, walkEnd);
    }

    [Fact]
    public void EveryOtherPage_MaxPages5_FiveRegions_WalkEndAtTheNextMatch()
    {
        var (s, m, _) = Armed();
        for (ulong i = 0; i < 16; i += 2) s.W(m + i * s.PS);
        var (n, vec, walkEnd) = Written(s, m, 16, 16, 5);
        Assert.Equal(5, n);
        Assert.Equal(m + 8 * s.PS, vec[4].Start);
        Assert.Equal(m + 10 * s.PS, walkEnd);
    }

    [Fact]
    public void EveryOtherPage_VecLen3_WalkEndAtPage6()
    {
        var (s, m, _) = Armed();
        for (ulong i = 0; i < 16; i += 2) s.W(m + i * s.PS);
        var (n, vec, walkEnd) = Written(s, m, 16, 3);
        Assert.Equal(3, n);
        Assert.Equal(new[] { m, m + 2 * s.PS, m + 4 * s.PS }, vec.Select(v => v.Start));
        Assert.Equal(m + 6 * s.PS, walkEnd);
    }

    [Fact]
    public void ContiguousRun_VecLen1_WalkEndIsEnd()
    {
        var (s, m, _) = Armed();
        for (ulong i = 0; i < 16; i++) s.W(m + i * s.PS);
        var (n, vec, walkEnd) = Written(s, m, 16, 1);
        Assert.Equal(1, n);
        Assert.Equal(m + 16 * s.PS, vec[0].End);
        Assert.Equal(m + 16 * s.PS, walkEnd);
    }

    [Fact]
    public void ReturnMaskZero_CollapsesRunsToCategoryZero()
    {
        var s = new Sim();
        ulong m = s.Anon(16);
        for (ulong i = 0; i < 16; i++) s.W(m + i * s.PS);
        var vec = new PageRegion[4];
        var a = PmScanArg.Create(m, m + 16 * s.PS, 4, 0, 0);
        Assert.Equal(1, s.K.Proc.PagemapScan(s.T.Pid, ref a, vec).Value);
        Assert.Equal(new PageRegion(m, m + 16 * s.PS, 0), vec[0]);
    }

    [Fact]
    public void OutputBeyondTheReturnedCount_IsLeftUntouched()
    {
        var (s, m, _) = Armed();
        s.W(m);
        var vec = Enumerable.Repeat(new PageRegion(1, 2, 3), 4).ToArray();
        var a = PmScanArg.Create(m, m + 16 * s.PS, 4, PageCategory.Written, PageCategory.Written);
        Assert.Equal(1, s.K.Proc.PagemapScan(s.T.Pid, ref a, vec).Value);
        Assert.All(vec.Skip(1), r => Assert.Equal(new PageRegion(1, 2, 3), r));
    }

    [Fact]
    public void ArmedEmptyPage_IsWpAllowedAndSwapped_0x11_GuardIs0x112()
    {
        var (s, m, _) = Armed(2);
        var vec = new PageRegion[2];
        var a = PmScanArg.Create(m, m + s.PS, 2, 0, PageCategory.All);
        s.K.Proc.PagemapScan(s.T.Pid, ref a, vec).OrThrow("scan");
        Assert.Equal(0x11UL, vec[0].Categories & ~PageCategory.SoftDirty);
        var g = new Sim();
        ulong gm = g.Anon(1);
        g.Madv(gm, 1, Madvise.GuardInstall).OrThrow("guard");
        g.Clear();
        var b = PmScanArg.Create(gm, gm + g.PS, 2, 0, PageCategory.All);
        g.K.Proc.PagemapScan(g.T.Pid, ref b, vec).OrThrow("scan");
        Assert.Equal(0x112UL, vec[0].Categories);
    }

    [Fact]
    public void ReadAndRearm_ReportsEachWriteOnce()
    {
        var (s, m, _) = Armed();
        s.W(m + 3 * s.PS);
        var vec = new PageRegion[16];
        var a = PmScanArg.Create(m, m + 16 * s.PS, 16, PageCategory.Written, PageCategory.Written,
            flags: PageCategory.ScanWpMatching | PageCategory.ScanCheckWpAsync);
        Assert.Equal(1, s.K.Proc.PagemapScan(s.T.Pid, ref a, vec).Value);
        Assert.Equal(m + 3 * s.PS, vec[0].Start);
        a = PmScanArg.Create(m, m + 16 * s.PS, 16, PageCategory.Written, PageCategory.Written,
            flags: PageCategory.ScanWpMatching | PageCategory.ScanCheckWpAsync);
        Assert.Equal(0, s.K.Proc.PagemapScan(s.T.Pid, ref a, vec).Value);
    }

    [Fact]
    public void UffdWp_DontNeedIsReportedWritten_ReadsStayClean()
    {
        var (s, m, _) = Armed(4);
        _ = s.R(m);
        s.Madv(m + s.PS, 1, Madvise.DontNeed).OrThrow("dontneed");
        var (n, vec, _) = Written(s, m, 4, 4);
        Assert.Equal(1, n);
        Assert.Equal(new PageRegion(m + s.PS, m + 2 * s.PS, PageCategory.Written), vec[0]);
    }

    [Fact]
    public void ThpWriteUnderUffdWp_SplitsAndReportsOnePage()
    {
        var s = new Sim();
        ulong hs = s.K.Arch.HugePageSize;
        ulong m = s.Anon(2 * hs / s.PS);
        ulong a = (m + hs - 1) & ~(hs - 1);
        s.T.Madvise(m, 2 * hs, Madvise.HugePage).OrThrow("thp");
        s.W(a);
        s.T.OpenUserfaultfd(out var u).OrThrow("uffd");
        u!.ApiHandshake(UffdConstants.Api, UffdConstants.FeatureWpAsync | UffdConstants.FeatureWpUnpopulated, out _).OrThrow("api");
        u.Register(a, hs, UffdConstants.RegisterModeWp).OrThrow("reg");
        u.WriteProtect(a, hs, true).OrThrow("wp");
        s.W(a + 7 * s.PS);
        var (n, vec, _) = Written(s, a, (int)(hs / s.PS), 8);
        Assert.Equal(1, n);
        Assert.Equal(new PageRegion(a + 7 * s.PS, a + 8 * s.PS, PageCategory.Written), vec[0]);
        Assert.Contains("AnonHugePages:         0 kB", s.K.Proc.Smaps(s.T.Pid));
    }

    [Fact]
    public void SoftDirtyCategory_AgreesWithPagemapBit55()
    {
        var s = new Sim();
        ulong m = s.Anon(32);
        for (ulong i = 0; i < 32; i += 3) s.W(m + i * s.PS);
        s.Clear();
        for (ulong i = 0; i < 32; i += 5) s.W(m + i * s.PS);
        var vec = new PageRegion[64];
        var a = PmScanArg.Create(m, m + 32 * s.PS, 64, PageCategory.SoftDirty, PageCategory.SoftDirty);
        long n = s.K.Proc.PagemapScan(s.T.Pid, ref a, vec).OrThrow("scan");
        var fromScan = new HashSet<ulong>();
        for (int r = 0; r < n; r++)
            for (ulong va = vec[r].Start; va < vec[r].End; va += s.PS) fromScan.Add(va);
        var pm = s.K.Proc.ReadPagemap(s.T.Pid, m, 32);
        for (int i = 0; i < 32; i++)
            Assert.Equal((pm[i] & PagemapBits.SoftDirty) != 0, fromScan.Contains(m + (ulong)i * s.PS));
    }

    [Theory]
    [InlineData(88UL, 0UL, 0UL, 0UL, Errno.EINVAL)]             // size
    [InlineData(96UL, 4UL, 0UL, 0UL, Errno.EINVAL)]             // flags
    [InlineData(96UL, 0UL, 1UL << 9, 0UL, Errno.EINVAL)]        // category bit 9
    [InlineData(96UL, 0UL, 0UL, 1UL, Errno.EINVAL)]             // unaligned start
    public void InvalidArguments(ulong size, ulong flags, ulong mask, ulong startOffset, Errno expected)
    {
        var s = new Sim();
        ulong m = s.Anon(4);
        var a = PmScanArg.Create(m + startOffset, m + 4 * s.PS, 0, mask, 0, flags);
        a.Size = size;
        Assert.Equal(expected, s.K.Proc.PagemapScan(s.T.Pid, ref a, []).Error);
    }

    [Fact]
    public void VecNullWithLength_StartBeyondTaskSize_EndBeforeStart_CheckWpAsync()
    {
        var s = new Sim();
        ulong m = s.Anon(4);
        var a = PmScanArg.Create(m, m + s.PS, 5, 0, 0);
        a.Vec = 0;
        Assert.Equal(Errno.EINVAL, s.K.Proc.PagemapScan(s.T.Pid, ref a, new PageRegion[5]).Error);
        var b = PmScanArg.Create(s.K.Arch.TaskSize, s.K.Arch.TaskSize + s.PS, 0, 0, 0);
        Assert.Equal(Errno.EFAULT, s.K.Proc.PagemapScan(s.T.Pid, ref b, []).Error);
        var c = PmScanArg.Create(m + s.PS, m, 0, 0, 0);
        Assert.Equal(Errno.EFAULT, s.K.Proc.PagemapScan(s.T.Pid, ref c, []).Error);
        var d = PmScanArg.Create(m, m + s.PS, 0, 0, 0, flags: PageCategory.ScanCheckWpAsync);
        Assert.Equal(Errno.EPERM, s.K.Proc.PagemapScan(s.T.Pid, ref d, []).Error);
        var e = PmScanArg.Create(m, m, 1, 0, 0);
        Assert.Equal(0, s.K.Proc.PagemapScan(s.T.Pid, ref e, new PageRegion[1]).Value);
        Assert.Equal(m, e.WalkEnd);
        s.K.Proc.Open(s.T.Pid, "pagemap", OpenMode.ReadOnly, out var f).OrThrow("open");
        var g = PmScanArg.Create(m, m + s.PS, 0, 0, 0);
        Assert.Equal(Errno.EINVAL, f!.Ioctl(0x1234, ref g, []).Error);
    }

    [Fact]
    public void UnmappedRange_ReturnsZero_WalkEndAtEnd()
    {
        var s = new Sim();
        var a = PmScanArg.Create(0x10000000, 0x10100000, 1, 0, 0);
        Assert.Equal(0, s.K.Proc.PagemapScan(s.T.Pid, ref a, new PageRegion[1]).Value);
        Assert.Equal(0x10100000UL, a.WalkEnd);
    }
}

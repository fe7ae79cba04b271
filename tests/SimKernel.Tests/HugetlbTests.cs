using CriuSharp.SimKernel.Ipc;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using CriuSharp.SimKernel.Uffd;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// hugetlb against the kernel's documented behaviour: Documentation/admin-guide/mm/hugetlbpage.rst
/// (pool files, reservations, MAP_HUGETLB / SHM_HUGETLB / memfd), mm/hugetlb.c (faults, SIGBUS,
/// copy-on-write), fs/proc/task_mmu.c (pagemap_hugetlb_range, pagemap_scan_hugetlb_entry,
/// smaps_hugetlb_range, clear_refs without a hugetlb walker).
/// </summary>
public class HugetlbTests
{
    private const ulong H = 2UL << 20;

    private static Sim WithPool(long pages)
    {
        var s = new Sim();
        s.K.Hugetlb.Write("/proc/sys/vm/nr_hugepages", pages.ToString(System.Globalization.CultureInfo.InvariantCulture)).OrThrow("pool");
        return s;
    }

    private static string Read(Kernel k, string path)
    {
        k.Hugetlb.Read(path, out var text).OrThrow(path);
        return text.Trim();
    }

    private static ulong MapHuge(Sim s, ulong len, MapFlags extra = MapFlags.Private) =>
        (ulong)s.T.Mmap(0, len, Prot.Read | Prot.Write, MapFlags.Anonymous | MapFlags.HugeTlb | extra).OrThrow("mmap");

    [Fact]
    public void PoolFiles_FollowNrHugepages_AndReservations()
    {
        var s = WithPool(3);
        const string dir = "/sys/kernel/mm/hugepages/hugepages-2048kB/";
        Assert.Equal("3", Read(s.K, dir + "nr_hugepages"));
        Assert.Equal("3", Read(s.K, dir + "free_hugepages"));
        Assert.Equal("0", Read(s.K, dir + "resv_hugepages"));
        ulong m = MapHuge(s, 2 * H);
        Assert.Equal("2", Read(s.K, dir + "resv_hugepages")); // reserved at mmap, not yet taken
        s.W(m);
        Assert.Equal("1", Read(s.K, dir + "resv_hugepages"));
        Assert.Equal("2", Read(s.K, dir + "free_hugepages"));
        Assert.Contains("HugePages_Rsvd:      1", Read(s.K, "/proc/meminfo"));
        s.T.Munmap(m, 2 * H).OrThrow("munmap");
        Assert.Equal("3", Read(s.K, dir + "free_hugepages"));
        Assert.Equal("0", Read(s.K, dir + "resv_hugepages"));
        // 1 GiB pages are listed on x86_64 (but nothing of that size can be put in the pool here).
        Assert.Equal("0", Read(s.K, "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"));
        Assert.Equal(Errno.EACCES, s.K.Hugetlb.Write(dir + "free_hugepages", "1").Error);
    }

    [Fact]
    public void EmptyPool_Mmap_Enomem_NoReserve_MapsButFaultIsSigbus()
    {
        var s = new Sim();
        Assert.Equal(Errno.ENOMEM, s.T.Mmap(0, H, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb).Error);
        ulong m = MapHuge(s, H, MapFlags.Private | MapFlags.NoReserve);
        Assert.False(s.T.Write(m, [1]).Ok);
        Assert.Equal(SimTask.SIGBUS, s.T.TermSignal);
    }

    [Fact]
    public void SizeBits_SelectThePool_UnknownSizeIsEinval()
    {
        var s = WithPool(1);
        var mb1 = (MapFlags)(20 << HugetlbState.HugeShift);  // MAP_HUGE_1MB: no such hstate
        Assert.Equal(Errno.EINVAL, s.T.Mmap(0, H, Prot.Read, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb | mb1).Error);
        var mb2 = (MapFlags)(21 << HugetlbState.HugeShift);  // MAP_HUGE_2MB
        Assert.True(s.T.Mmap(0, H, Prot.Read, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb | mb2).Ok);
        var gb1 = (MapFlags)(30 << HugetlbState.HugeShift);  // MAP_HUGE_1GB with an empty pool
        Assert.Equal(Errno.ENOMEM, s.T.Mmap(0, 1UL << 30, Prot.Read, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb | gb1).Error);
        // MAP_HUGETLB on a regular file is EINVAL.
        var f = s.K.Fs.Create("/tmp/regular", new byte[4096]);
        Assert.Equal(Errno.EINVAL, s.T.Mmap(0, H, Prot.Read, MapFlags.Private | MapFlags.HugeTlb, f).Error);
    }

    [Fact]
    public void Mapping_RoundsUpAligns_AndRefusesPartialSplits()
    {
        var s = WithPool(2);
        ulong m = MapHuge(s, 4096);
        var v = s.T.Mm.Find(m)!;
        Assert.Equal(H, v.Length);
        Assert.Equal(0UL, m & (H - 1));
        Assert.Equal(Errno.EINVAL, s.T.Munmap(m, 4096).Error);
        Assert.Equal(Errno.EINVAL, s.T.Mprotect(m + 4096, 4096, Prot.Read).Error);
        Assert.Equal(Errno.EINVAL, s.T.Mmap(m + 4096, H, Prot.Read, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb | MapFlags.Fixed).Error);
        string maps = s.K.Proc.Maps(s.T.Pid);
        Assert.Contains("/anon_hugepage (deleted)", maps);
        s.W(m + 5000, 7);
        string smaps = s.K.Proc.Smaps(s.T.Pid);
        Assert.Contains("KernelPageSize:     2048 kB", smaps);
        Assert.Contains("Private_Hugetlb:    2048 kB", smaps);
        Assert.Contains(" ht", smaps);
        Assert.Contains("HugetlbPages:\t    2048 kB", s.K.Proc.Status(s.T.Pid));
    }

    [Fact]
    public void Pagemap_ContiguousFrames_SoftDirtyOnlyFromTheVma()
    {
        var s = WithPool(1);
        ulong m = MapHuge(s, H);
        s.W(m);
        var e = s.K.Proc.ReadPagemap(s.T.Pid, m, 512);
        Assert.All(e, x => Assert.NotEqual(0UL, x & PagemapBits.Present));
        Assert.Equal((e[0] & PagemapBits.PfnMask) + 511, e[511] & PagemapBits.PfnMask);
        Assert.Equal(0UL, e[0] & PagemapBits.File); // a private hugetlb page is anonymous
        Assert.NotEqual(0UL, e[0] & PagemapBits.Exclusive);
        Assert.NotEqual(0UL, e[0] & PagemapBits.SoftDirty); // VM_SOFTDIRTY of the new VMA
        s.Clear();
        s.W(m + 4096);
        // clear_refs has no hugetlb walker and pagemap_hugetlb_range reports only VM_SOFTDIRTY:
        // writes to hugetlb memory are not tracked by soft-dirty.
        Assert.False(s.SD(m));
        Assert.False(s.SD(m + 4096));
    }

    [Fact]
    public void PagemapScan_ReportsHuge_AndWriteProtectsOnlyWholePages()
    {
        var s = WithPool(1);
        ulong m = MapHuge(s, H);
        s.T.OpenUserfaultfd(out var uffd).OrThrow("uffd");
        uffd!.ApiHandshake(UffdConstants.Api, UffdConstants.FeatureWpAsync | UffdConstants.FeatureWpHugetlbfsShmem, out _).OrThrow("api");
        uffd.Register(m, H, UffdConstants.RegisterModeWp).OrThrow("register");
        Assert.Equal(Errno.EINVAL, uffd.WriteProtect(m, 4096, true).Error);
        s.W(m);
        var vec = new PageRegion[4];
        var a = PmScanArg.Create(m, m + H, 4, PageCategory.Written, PageCategory.Written | PageCategory.Huge | PageCategory.Present);
        Assert.Equal(1, s.K.Proc.PagemapScan(s.T.Pid, ref a, vec).Value);
        Assert.Equal(new PageRegion(m, m + H, PageCategory.Written | PageCategory.Huge | PageCategory.Present), vec[0]);

        // Write-protecting half a hugetlb page is impossible: nothing is reported, walk_end = its start.
        var half = PmScanArg.Create(m, m + H / 2, 4, PageCategory.Written, PageCategory.Written, flags: PageCategory.ScanWpMatching);
        Assert.Equal(0, s.K.Proc.PagemapScan(s.T.Pid, ref half, vec).Value);
        Assert.Equal(m, half.WalkEnd);
        var whole = PmScanArg.Create(m, m + H, 4, PageCategory.Written, PageCategory.Written, flags: PageCategory.ScanWpMatching);
        Assert.Equal(1, s.K.Proc.PagemapScan(s.T.Pid, ref whole, vec).Value);
        Assert.NotEqual(0UL, s.PM(m + 8192) & PagemapBits.UffdWp); // the whole huge page
        // One async write fault releases the whole huge page.
        s.W(m + H - 1);
        Assert.Equal(0UL, s.PM(m) & PagemapBits.UffdWp);
    }

    [Fact]
    public void UffdWp_OnHugetlb_NeedsTheHugetlbfsShmemFeature()
    {
        var s = WithPool(1);
        ulong m = MapHuge(s, H);
        s.T.OpenUserfaultfd(out var uffd).OrThrow("uffd");
        uffd!.ApiHandshake(UffdConstants.Api, UffdConstants.FeatureWpAsync, out _).OrThrow("api");
        Assert.Equal(Errno.EINVAL, uffd.Register(m, H, UffdConstants.RegisterModeWp).Error);
    }

    [Fact]
    public void Fork_CopyOnWrite_ChildWithoutAPoolPageGetsSigbus()
    {
        var s = WithPool(1);
        ulong m = MapHuge(s, H);
        s.W(m, 5);
        var child = s.K.Fork(s.T);
        Assert.Equal(5, s.R(m));
        Assert.False(child.Write(m, [9]).Ok); // hugetlb_wp finds no page for the copy
        Assert.Equal(SimTask.SIGBUS, child.TermSignal);
        s.W(m, 6); // the parent, now the only mapper, reuses its page
        Assert.Equal(6, s.R(m));
    }

    [Fact]
    public void Fork_CopyOnWrite_WithAPoolPage_SeparatesContents()
    {
        var s = WithPool(2);
        ulong m = MapHuge(s, H);
        s.W(m, 5);
        var child = s.K.Fork(s.T);
        child.Write(m, [9]).OrThrow("child write");
        Assert.Equal(5, s.R(m));
        var b = new byte[1];
        child.Read(m, b).OrThrow("read");
        Assert.Equal(9, b[0]);
    }

    [Fact]
    public void SysvShm_Hugetlb_ReservesAtShmget_FreesAfterRmidAndDetach()
    {
        var s = new Sim();
        Assert.Equal(Errno.ENOMEM, s.K.Shm.Shmget(2, H, ShmFlags.ShmHugetlb | ShmFlags.IpcCreat).Error);
        s.K.Hugetlb.Write("/proc/sys/vm/nr_hugepages", "1").OrThrow("pool");
        int id = (int)s.K.Shm.Shmget(2, H, ShmFlags.ShmHugetlb | ShmFlags.IpcCreat).OrThrow("shmget");
        Assert.Equal(1, s.K.Hugetlb.Default.Resv);
        ulong a = (ulong)s.T.Shmat(id).OrThrow("shmat");
        s.W(a, 3);
        Assert.Contains("/SYSV00000002 (deleted)", s.K.Proc.Maps(s.T.Pid));
        Assert.NotEqual(0UL, s.PM(a) & PagemapBits.File);
        s.K.Shm.Shmctl(id, ShmFlags.IpcRmid).OrThrow("rmid");
        Assert.Equal(0, s.K.Hugetlb.Default.Free); // still attached
        s.T.Shmdt(a).OrThrow("shmdt");
        Assert.Equal(1, s.K.Hugetlb.Default.Free);
    }

    [Fact]
    public void Memfd_Hugetlb_SharedPages_BackToThePoolAfterCloseAndUnmap()
    {
        var s = WithPool(1);
        s.K.MemfdCreate("x", Kernel.MfdHugetlb, out var f).OrThrow("memfd");
        Assert.Equal(Errno.EINVAL, s.K.MemfdCreate("y", 21u << 26, out _).Error); // size without MFD_HUGETLB
        ulong a = (ulong)s.T.Mmap(0, H, Prot.Read | Prot.Write, MapFlags.Shared, f).OrThrow("mmap");
        ulong b = (ulong)s.T.Mmap(0, H, Prot.Read | Prot.Write, MapFlags.Shared, f).OrThrow("mmap");
        s.W(a + 100, 42);
        Assert.Equal(42, s.R(b + 100)); // one page of the file, mapped twice
        Assert.Contains("/memfd:x (deleted)", s.K.Proc.Maps(s.T.Pid));
        s.K.Close(f!);
        s.T.Munmap(a, H).OrThrow("munmap");
        Assert.Equal(0, s.K.Hugetlb.Default.Free);
        s.T.Munmap(b, H).OrThrow("munmap");
        Assert.Equal(1, s.K.Hugetlb.Default.Free);
    }

    [Fact]
    public void Exit_ReturnsPagesAndReservations()
    {
        var s = WithPool(2);
        ulong m = MapHuge(s, 2 * H);
        s.W(m);
        s.K.Exit(s.T, 0);
        Assert.Equal(2, s.K.Hugetlb.Default.Free);
        Assert.Equal(0, s.K.Hugetlb.Default.Resv);
    }
}

/// <summary>MADV_COLLAPSE (mm/khugepaged.c madvise_collapse, man 2 madvise).</summary>
public class CollapseTests
{
    [Fact]
    public void Collapse_MakesOneThp_KeepsTheBytes_RefusesNoHugepage()
    {
        var s = new Sim(thp: ThpMode.Never); // independent of the sysfs mode
        ulong area = s.Anon(1024);
        ulong m = (area + (2UL << 20) - 1) & ~((2UL << 20) - 1);
        s.W(m + 5 * s.PS, 42);
        Assert.True(s.Madv(m, 512, Madvise.Collapse).Ok);
        Assert.Equal(42, s.R(m + 5 * s.PS));
        Assert.Equal(0, s.R(m + 6 * s.PS));
        Assert.Contains("AnonHugePages:      2048 kB", s.K.Proc.Smaps(s.T.Pid));

        s.Madv(area, 1024, Madvise.NoHugePage).OrThrow("nohugepage");
        Assert.Equal(Errno.EINVAL, s.Madv(m, 512, Madvise.Collapse).Error);
    }
}

using CriuSharp.Dumper;
using CriuSharp.Dumper.Proc;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Ipc;
using CriuSharp.SimKernel.Machine;
using FsCheck;
using FsCheck.Fluent;
using Microsoft.FSharp.Core;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// hugetlb as CRIU dumps it (criu/proc_parse.c, criu/mem.c, criu/shmem.c, criu/include/hugetlb.h):
/// vma_entry.flags carry MAP_HUGETLB and the size flag, private hugetlb is anonymous private memory
/// dumped in full by the final dump and skipped by pre-dumps, shared hugetlb (MAP_SHARED, memfd,
/// SysV) is VMA_ANON_SHARED with the hugetlbfs inode as shmid and goes through the shmem images,
/// and restore maps each with MAP_HUGETLB of the same size.
/// </summary>
public class HugetlbDumpTests
{
    private const ulong H = 2UL << 20;
    private const uint MapHugetlb2Mb = 21u << 26;

    private static Kernel NewKernel(long hugePages) =>
        new(new KernelConfig { MemoryBytes = 1L << 30, SwapBytes = 64L << 20, HugePages = hugePages, Thp = ThpMode.Always });

    [Fact]
    public void PrivateSharedMemfdAndSysvHugetlb_PreDumpSkipsThem_DumpAndRestoreAreByteIdentical()
    {
        var k = NewKernel(16);
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("htlb", 2000);
        var rw = Prot.Read | Prot.Write;
        ulong priv = (ulong)t.Mmap(0, 2 * H, rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb).OrThrow("private");
        Procs.Touch(t, priv + 4096 * 7, 0x1111); // first huge page only; the second stays unfaulted
        ulong shared = (ulong)t.Mmap(0, 2 * H, rw, MapFlags.Shared | MapFlags.Anonymous | MapFlags.HugeTlb).OrThrow("shared");
        Procs.Touch(t, shared + H + 8, 0x2222);
        k.MemfdCreate("buf", Kernel.MfdHugetlb, out var mfd).OrThrow("memfd");
        ulong mf = (ulong)t.Mmap(0, H, rw, MapFlags.Shared, mfd).OrThrow("memfd map");
        Procs.Touch(t, mf + 16, 0x3333);
        int seg = (int)k.Shm.Shmget(0x77, H, ShmFlags.ShmHugetlb | ShmFlags.IpcCreat).OrThrow("shmget");
        ulong shm = (ulong)t.Shmat(seg).OrThrow("shmat");
        Procs.Touch(t, shm + 24, 0x4444);
        ulong thp = Procs.Map(t, 1024); // THP always: huge pages where aligned
        Procs.Fill(t, thp, 1024, 5);

        string baseDir = RoundTrip.NewDir("hugetlb");
        var pre = Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 2000, ImagesDir = Path.Combine(baseDir, "pre0") });
        var prePagemap = ImageSet.Open(Path.Combine(baseDir, "pre0")).ReadPagemap(2000);
        // "We totally ignore MAP_HUGETLB on pre-dump" (criu/mem.c): no entry inside a hugetlb VMA.
        Assert.DoesNotContain(prePagemap.Entries, e => e.Vaddr >= priv && e.Vaddr < priv + 2 * H);
        Procs.Touch(t, priv + H + 4096, 0x5555); // faults the second private huge page after the pre-dump
        Procs.Touch(t, thp + 4096 * 3, 0x6666);

        var expected = RoundTrip.Snapshot(k, 2000);
        string final = Path.Combine(baseDir, "dump");
        Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 2000, ImagesDir = final, PrevImagesDir = "../pre0", TrackMem = true });
        var set = ImageSet.Open(final);
        var vmas = set.ReadMm(2000).Vmas;
        var pv = vmas.Single(v => v.Start == priv);
        Assert.Equal(VmaMapFlags.Private | VmaMapFlags.Anonymous | VmaMapFlags.HugeTlb | MapHugetlb2Mb, pv.Flags);
        Assert.Equal((uint)(VmaStatus.Regular | VmaStatus.AnonPrivate), pv.Status);
        var sv = vmas.Single(v => v.Start == shared);
        Assert.Equal(VmaMapFlags.Shared | VmaMapFlags.Anonymous | VmaMapFlags.HugeTlb | MapHugetlb2Mb, sv.Flags);
        Assert.Equal((uint)(VmaStatus.Regular | VmaStatus.AnonShared), sv.Status);
        Assert.NotEqual(0UL, sv.Shmid);
        Assert.Equal((uint)(VmaStatus.Regular | VmaStatus.AnonShared), vmas.Single(v => v.Start == mf).Status);
        Assert.Equal((uint)(VmaStatus.Regular | VmaStatus.AnonShared | VmaStatus.SysVIpc), vmas.Single(v => v.Start == shm).Status);
        // The second private huge page was written only after the pre-dump: the dump has it in full, not from the parent.
        var pm = set.ReadPagemap(2000);
        Assert.Contains(pm.Entries, e => e.Vaddr <= priv + H && priv + H < e.Vaddr + (PagemapImage.NrPages(e) << 12)
                                         && (PagemapImage.FlagsOf(e) & PagemapFlags.Present) != 0);
        Assert.DoesNotContain(pm.Entries, e => e.Vaddr >= priv && e.Vaddr < priv + 2 * H && (PagemapImage.FlagsOf(e) & PagemapFlags.Parent) != 0);

        var dest = NewKernel(16);
        Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = final });
        RoundTrip.AssertSame(expected, dest);
        var smaps = SmapsParser.Parse(dest.Proc.Smaps(2000));
        foreach (ulong at in new[] { priv, shared, mf, shm })
        {
            var v = smaps.Single(x => x.Start == at);
            Assert.True(v.IsHugetlb, $"0x{at:x} is not hugetlb after restore");
            Assert.Equal(H, v.KernelPageBytes);
        }
        Assert.True(pre.Stats.PagesWritten > 0);
    }

    [Fact]
    public void Restore_WithoutAHugetlbPool_SaysSo()
    {
        var k = NewKernel(2);
        var t = k.Spawn("htlb", 2100);
        ulong priv = (ulong)t.Mmap(0, H, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb).OrThrow("private");
        Procs.Touch(t, priv, 1);
        string dir = RoundTrip.NewDir("hugetlb-nopool");
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 2100, ImagesDir = dir });
        var e = Assert.Throws<DumperException>(() => Criu.Restore(new ClockOnlyHost(NewKernel(0)).AsKernelApi(), new RestoreOptions { ImagesDir = dir }));
        Assert.Contains("hugetlb pool", e.Message);
    }

    // ---- property: mixed hugetlb and THP address spaces --------------------------------------

    /// <summary>Region kinds: 0 small pages (THP never), 1 THP (MADV_HUGEPAGE), 2 private hugetlb, 3 shared hugetlb.</summary>
    public sealed record Layout(int[] Kinds, (int Region, int Page, int Value, bool PreDump)[] Writes);

    private static readonly Gen<Layout> LayoutGen =
        from kinds in Gen.ArrayOf(Gen.Choose(0, 3)).Where(a => a.Length is > 0 and <= 5)
        from writes in Gen.ArrayOf(
            from region in Gen.Choose(0, 4)
            from page in Gen.Choose(0, 1023)
            from value in Gen.Choose(1, int.MaxValue)
            from pre in Gen.Frequency((1, Gen.Constant(true)), (8, Gen.Constant(false)))
            select (region, page, value, pre))
        select new Layout(kinds, writes.Length > 60 ? writes[..60] : writes);

    [Fact]
    public void MixedHugetlbAndThpAddressSpaces_RestoreByteIdentical() =>
        Prop.ForAll(Arb.From(LayoutGen), RunLayout).Check(Config.QuickThrowOnFailure.WithMaxTest(12)
            .WithReplay(FSharpOption<Replay>.Some(new Replay(new Rnd(0x4A6E, 0x9E3779B97F4A7C15UL | 1), FSharpOption<int>.None))));

    private static bool RunLayout(Layout l)
    {
        var k = new Kernel(new KernelConfig { MemoryBytes = 1L << 30, SwapBytes = 64L << 20, HugePages = 16, Thp = ThpMode.Madvise });
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("mixed", 2200);
        var rw = Prot.Read | Prot.Write;
        var bases = new ulong[l.Kinds.Length];
        for (int i = 0; i < l.Kinds.Length; i++)
        {
            // Two huge pages' worth each (1024 small pages), aligned so THP can back the madvised ones.
            bases[i] = l.Kinds[i] switch
            {
                2 => (ulong)t.Mmap(0, 2 * H, rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb).OrThrow("hugetlb private"),
                3 => (ulong)t.Mmap(0, 2 * H, rw, MapFlags.Shared | MapFlags.Anonymous | MapFlags.HugeTlb).OrThrow("hugetlb shared"),
                _ => AlignedAnon(t, l.Kinds[i] == 1),
            };
        }
        string baseDir = RoundTrip.NewDir("mixed");
        try
        {
            string? prev = null;
            int n = 0;
            foreach (var (region, page, value, pre) in l.Writes)
            {
                int r = region % bases.Length;
                Procs.Touch(t, bases[r] + (ulong)page * 4096 + (ulong)(value % 512) * 8, (ulong)value);
                if (pre)
                {
                    Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 2200, ImagesDir = Path.Combine(baseDir, $"pre{n}"), PrevImagesDir = prev });
                    prev = $"../pre{n++}";
                }
            }
            var expected = RoundTrip.Snapshot(k, 2200);
            var src = SmapsParser.Parse(k.Proc.Smaps(2200));
            string final = Path.Combine(baseDir, "dump");
            Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 2200, ImagesDir = final, PrevImagesDir = prev, TrackMem = true });
            var dest = new Kernel(k.Config);
            Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = final });
            RoundTrip.AssertSame(expected, dest);
            // The same kinds of memory come back: hugetlb where it was, THP advice where it was.
            var dst = SmapsParser.Parse(dest.Proc.Smaps(2200));
            foreach (var b in bases)
            {
                var a = src.Single(v => v.Start <= b && b < v.End);
                var d = dst.Single(v => v.Start <= b && b < v.End);
                Assert.Equal((a.IsHugetlb, a.Shared, a.VmFlags & SmapsFlags.HugePage), (d.IsHugetlb, d.Shared, d.VmFlags & SmapsFlags.HugePage));
            }
            return true;
        }
        finally
        {
            Directory.Delete(baseDir, recursive: true);
        }
    }

    private static ulong AlignedAnon(SimTask t, bool thp)
    {
        ulong area = (ulong)t.Mmap(0, 3 * H, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous).OrThrow("anon");
        ulong start = (area + H - 1) & ~(H - 1);
        if (start > area)
            t.Munmap(area, start - area).OrThrow("trim");
        t.Munmap(start + 2 * H, area + 3 * H - (start + 2 * H)).OrThrow("trim");
        if (thp)
            t.Madvise(start, 2 * H, Madvise.HugePage).OrThrow("madvise");
        return start;
    }
}

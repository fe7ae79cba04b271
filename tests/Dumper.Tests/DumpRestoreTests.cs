using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.Dumper.Tests;

public class DumpRestoreTests
{
    public static TheoryData<string, bool> ArchAndCompression() => new()
    {
        { "x86_64", true }, { "x86_64", false }, { "arm64", true }, { "arm64", false }, { "ppc64", true },
    };

    [Theory]
    [MemberData(nameof(ArchAndCompression))]
    public void FullDump_RestoresTreeByteForByte(string arch, bool lz4)
    {
        var k = RoundTrip.NewKernel(arch);
        var host = new ClockOnlyHost(k);
        var root = Procs.Rich(k, 500);
        int ps = k.Arch.PageSize;
        // shared anonymous memory seen by parent and child, COW-shared private pages
        ulong shm = (ulong)root.Mmap(0, 4UL * (ulong)ps, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Anonymous).Value;
        Procs.Touch(root, shm + (ulong)ps, 0xabcdef);
        var child = k.Fork(root, 501);
        Procs.Touch(child, shm + 3UL * (ulong)ps, 0x5555);       // visible to both
        ulong anon = SmapsFirstAnon(k, 501);
        Procs.Touch(child, anon + 8, 0x77);                      // child's own copy of one page
        var other = k.Spawn("other", 502, 500);                  // different program: spawned, not forked
        Procs.Fill(other, Procs.Map(other, 4), 4, 9);

        var (steps, restore, dest) = RoundTrip.DumpRestore(host, 500, 0, lz4 ? PageStoreOptions.Lz4() : PageStoreOptions.Raw);
        Assert.Equal([500, 501, 502], steps[0].Pids);
        Assert.Null(k.FindTask(500)); // killed after the dump
        Assert.True(restore.Stats.PagesSkippedCow > 0, "fork-inherited identical pages stay shared");
        Assert.True(restore.Stats.VmasVerified > 0);
        // the shared mapping is one object after restore
        Procs.Touch(dest.FindTask(501)!, shm, 0x99);
        Assert.True(dest.FindTask(500)!.LoadU64(shm, out ulong seen) && seen == 0x99);
    }

    private static ulong SmapsFirstAnon(Kernel k, int pid) =>
        Proc.SmapsParser.Parse(k.Proc.Smaps(pid)).First(v => v.IsAnonPrivate && v.Name is null).Start;

    [Fact]
    public void SwappedPages_AreDumped()
    {
        var k = RoundTrip.NewKernel();
        var t = k.Spawn("swapper", 600);
        ulong a = Procs.Map(t, 16);
        Procs.Fill(t, a, 16, 3);
        var expected = RoundTrip.Snapshot(k, 600);
        Assert.True(t.Madvise(a, 16UL * 4096, Madvise.PageOut).Ok);
        Assert.Contains("VmSwap", k.Proc.Status(600));
        var dir = RoundTrip.NewDir("swap");
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 600, ImagesDir = dir });
        var dest = new Kernel(k.Config);
        Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = dir });
        RoundTrip.AssertSame(expected, dest);
    }

    [Fact]
    public void LeaveRunning_KeepsTheTreeAlive_AndDirIsOverwrittenLikeCriu()
    {
        var k = RoundTrip.NewKernel();
        var t = Procs.Rich(k, 700);
        var dir = RoundTrip.NewDir("leave");
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 700, ImagesDir = dir, LeaveRunning = true });
        Assert.Equal(TaskState.Running, t.State);
        Procs.Touch(t, Proc.SmapsParser.Parse(k.Proc.Maps(700)).First(v => v.IsAnonPrivate && v.Name is null).Start, 42);
        var r = Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 700, ImagesDir = dir, LeaveRunning = true });
        Assert.True(r.Stats.PagesWritten > 0);
        File.WriteAllText(Path.Combine(dir, "notes.txt"), "mine");
        Assert.Throws<DumperException>(() => Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 700, ImagesDir = dir }));
    }

    [Fact]
    public void Stats_HaveCriuFieldsAndOurs()
    {
        var k = RoundTrip.NewKernel();
        Procs.Rich(k, 800);
        var dir = RoundTrip.NewDir("stats");
        var r = Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 800, ImagesDir = dir });
        var s = ImageSet.Open(dir).ReadDumpStats()!;
        Assert.Equal(r.Stats.PagesWritten, s.PagesWritten);
        Assert.True(s.PagesScanned >= s.PagesWritten);
        Assert.True(s.FrozenTime >= s.MemdumpTime + s.FreezingTime);
        Assert.Equal("lz4", s.Compression);
        Assert.Equal("pagemap-scan", s.Tracker);
        Assert.True(s.BytesCompressed < s.BytesRaw);
        var restoreDir = dir;
        var dest = new Kernel(k.Config);
        dest.Fs.Create("/data/blob", ReadFile(k, "/data/blob"));
        Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = restoreDir });
        var rs = ImageSet.Open(dir).ReadRestoreStats()!;
        Assert.True(rs.PagesRestored > 0);
        Assert.True(rs.RestoreTime > 0);
    }

    internal static byte[] ReadFile(Kernel k, string path)
    {
        var f = k.Fs.Lookup(path)!;
        var b = new byte[f.Size];
        k.Fs.Read(f, 0, b);
        return b;
    }

    [Fact]
    public void Check_ReportsTheBestTracker_PerProfile()
    {
        Assert.Equal(TrackerKind.PagemapScan, Criu.Check(new SimKernelAdapter(RoundTrip.NewKernel("x86_64"))).BestTracker);
        Assert.Equal(TrackerKind.UffdWp, Criu.Check(new SimKernelAdapter(RoundTrip.NewKernel("arm64"))).BestTracker);
        Assert.Equal(TrackerKind.SoftDirty, Criu.Check(new SimKernelAdapter(RoundTrip.NewKernel("x86_64", "2013"))).BestTracker);
        var none = Criu.Check(new SimKernelAdapter(RoundTrip.NewKernel("arm64", "2013")));
        Assert.Equal(TrackerKind.None, none.BestTracker);
        Assert.Single(none.Warnings);
    }

    [Fact]
    public void CorruptedPages_FailVerification_NamingTheRange()
    {
        var k = RoundTrip.NewKernel();
        var t = k.Spawn("victim", 900);
        ulong a = Procs.Map(t, 4);
        Procs.Fill(t, a, 4, 5);
        var dir = RoundTrip.NewDir("corrupt");
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 900, ImagesDir = dir, PageStore = PageStoreOptions.Raw });
        var pages = Directory.GetFiles(dir, "pages-*.img").OrderByDescending(f => new FileInfo(f).Length).First();
        var bytes = File.ReadAllBytes(pages);
        bytes[^100] ^= 0xff;
        File.WriteAllBytes(pages, bytes);
        var ex = Assert.Throws<DumperException>(() => Criu.Restore(new ClockOnlyHost(new Kernel(k.Config)).AsKernelApi(), new RestoreOptions { ImagesDir = dir }));
        Assert.Contains("checksum mismatch", ex.Message);
        Assert.NotNull(ex.RangeStart);
    }
}

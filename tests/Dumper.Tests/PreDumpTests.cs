using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Mm;
using FsCheck;
using FsCheck.Fluent;

namespace CriuSharp.Dumper.Tests;

public class PreDumpTests
{
    public static TheoryData<int, string, bool> Chains()
    {
        var d = new TheoryData<int, string, bool>();
        foreach (int n in new[] { 0, 1, 3, 8 })
            foreach (var arch in new[] { "x86_64", "arm64" })
                foreach (bool lz4 in new[] { true, false })
                    d.Add(n, arch, lz4);
        return d;
    }

    [Theory]
    [MemberData(nameof(Chains))]
    public void PreDumpChain_WithWritesBetween_RestoresByteForByte(int preDumps, string arch, bool lz4)
    {
        var k = RoundTrip.NewKernel(arch);
        var host = new ClockOnlyHost(k);
        var t = Procs.Rich(k, 100);
        int ps = k.Arch.PageSize;
        ulong a = Procs.Map(t, 32);
        Procs.Fill(t, a, 32, 11);
        var (steps, _, _) = RoundTrip.DumpRestore(host, 100, preDumps, lz4 ? PageStoreOptions.Lz4() : PageStoreOptions.Raw, i =>
        {
            Procs.Touch(t, a + (ulong)(i % 32) * (ulong)ps, (ulong)i + 1);
            if (i == 1)
            {
                ulong b = Procs.Map(t, 3);            // a new VMA between pre-dumps
                Procs.Touch(t, b, 0xb0b);
                t.Madvise(a + 20UL * (ulong)ps, 2UL * (ulong)ps, Madvise.DontNeed); // dropped pages
            }
        });
        if (preDumps > 0)
        {
            Assert.True(steps[^1].Stats.PagesSkippedParent > 0, "the final dump leaves clean pages to the parents");
            Assert.Equal(arch == "arm64" ? TrackerKind.UffdWp : TrackerKind.PagemapScan, steps[0].Tracker);
        }
    }

    [Theory]
    [InlineData("x86_64", "modern", TrackerKind.SoftDirty)]
    [InlineData("x86_64", "modern", TrackerKind.PagemapScan)]
    [InlineData("x86_64", "modern", TrackerKind.UffdWp)]
    [InlineData("arm64", "modern", TrackerKind.UffdWp)]
    [InlineData("x86_64", "2013", TrackerKind.SoftDirty)]
    [InlineData("x86_64", "linux-6.12", TrackerKind.SoftDirty)]
    public void HotColdWorkload_LaterPreDumpsAreSmaller(string arch, string version, TrackerKind tracker)
    {
        var k = RoundTrip.NewKernel(arch, version);
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("hotcold", 200);
        int ps = k.Arch.PageSize;
        ulong cold = Procs.Map(t, 256);
        Procs.Fill(t, cold, 256, 1);
        ulong hot = Procs.Map(t, 8);
        Procs.Fill(t, hot, 8, 2);
        var (steps, _, _) = RoundTrip.DumpRestore(host, 200, 4, PageStoreOptions.Lz4(), i =>
        {
            for (int p = 0; p < 8; p++) Procs.Touch(t, hot + (ulong)(p * ps), (ulong)(i * 100 + p));
        }, tracker);
        Assert.Equal(tracker, steps[0].Tracker);
        for (int i = 1; i < steps.Count; i++)
            Assert.True(steps[i].Stats.PagesWritten < steps[0].Stats.PagesWritten / 4,
                $"step {i} wrote {steps[i].Stats.PagesWritten} pages, first {steps[0].Stats.PagesWritten}");
    }

    [Fact]
    public void NoTracker_FallsBackToFullCopies_WithOneWarning()
    {
        var k = RoundTrip.NewKernel("arm64", "2013");
        var t = k.Spawn("plain", 300);
        ulong a = Procs.Map(t, 16);
        Procs.Fill(t, a, 16, 1);
        var (steps, _, _) = RoundTrip.DumpRestore(new ClockOnlyHost(k), 300, 2, PageStoreOptions.Lz4(), i => Procs.Touch(t, a, (ulong)i));
        Assert.Contains(steps[0].Warnings, w => w.Code == "no-tracker");
        Assert.Equal(TrackerKind.None, steps[0].Tracker);
        Assert.Equal(0UL, steps[1].Stats.PagesSkippedParent);
    }

    [Fact]
    public void PreDumpImages_AreThin_AndNotRestorable()
    {
        var k = RoundTrip.NewKernel();
        Procs.Rich(k, 310);
        var dir = RoundTrip.NewDir("thin");
        Criu.PreDump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 310, ImagesDir = dir });
        var set = ImageSet.Open(dir);
        var inv = set.ReadInventory();
        Assert.Equal(0u, inv.ImgVersion);
        Assert.True(inv.HasDumpUptime && inv.HasPreDumpMode);
        Assert.False(set.Has("pstree.img"));
        Assert.True(set.HasPagemap(310));
        Assert.Equal(TaskState.Running, k.FindTask(310)!.State);
        var ex = Assert.Throws<DumperException>(() => Criu.Restore(new ClockOnlyHost(new Kernel(k.Config)).AsKernelApi(), new RestoreOptions { ImagesDir = dir }));
        Assert.Contains("pre-dump", ex.Message);
    }

    [Fact]
    public void PidReuse_ParentIgnored_TaskDumpedInFull()
    {
        var k = RoundTrip.NewKernel();
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("first", 400);
        ulong a = Procs.Map(t, 16);
        Procs.Fill(t, a, 16, 1);
        var baseDir = RoundTrip.NewDir("reuse");
        Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 400, ImagesDir = Path.Combine(baseDir, "pre0") });
        host.Advance(1_000_000);
        k.Exit(t, 0, SimTask.SIGKILL);
        k.Reap(t);
        var u = k.Spawn("first", 400);
        ulong b = Procs.Map(u, 16);
        Assert.Equal(a, b);
        Procs.Fill(u, b, 16, 2);
        var expected = RoundTrip.Snapshot(k, 400);
        var r = Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 400, ImagesDir = Path.Combine(baseDir, "dump"), PrevImagesDir = "../pre0", TrackMem = true });
        Assert.Contains(r.Warnings, w => w.Code == "pid-reuse");
        Assert.Equal(0UL, r.Stats.PagesSkippedParent);
        var dest = new Kernel(k.Config);
        Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = Path.Combine(baseDir, "dump") });
        RoundTrip.AssertSame(expected, dest);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AutoDedup_PunchesSupersededPagesOutOfParents(bool lz4)
    {
        var k = RoundTrip.NewKernel();
        var t = k.Spawn("dedup", 410);
        ulong a = Procs.Map(t, 64);
        Procs.Fill(t, a, 64, 1);
        var baseDir = RoundTrip.NewDir("dedup");
        var store = lz4 ? PageStoreOptions.Lz4(blockPages: 4) : PageStoreOptions.Raw;
        RoundTrip.DumpRestore(new ClockOnlyHost(k), 410, 1, store, _ =>
        {
            for (int p = 0; p < 32; p++) Procs.Touch(t, a + (ulong)p * 4096, 0xdd);
        }, autoDedup: true, baseDir: baseDir);
        // the parent's copy of the 32 superseded pages is gone: its pages file has holes
        var parentPages = Directory.GetFiles(Path.Combine(baseDir, "pre0"), "pages-*.img").Single();
        long allocated = AllocatedBytes(parentPages);
        Assert.True(allocated < new FileInfo(parentPages).Length, $"allocated {allocated} of {new FileInfo(parentPages).Length}");
    }

    private static long AllocatedBytes(string path)
    {
        var psi = new System.Diagnostics.ProcessStartInfo("stat", ["-c", "%b %B", path]) { RedirectStandardOutput = true };
        using var p = System.Diagnostics.Process.Start(psi)!;
        var parts = p.StandardOutput.ReadToEnd().Trim().Split(' ');
        p.WaitForExit();
        return long.Parse(parts[0]) * long.Parse(parts[1]);
    }

    [Fact]
    public void MissingOrBadParent_IsATypedError()
    {
        var k = RoundTrip.NewKernel();
        Procs.Rich(k, 420);
        var baseDir = RoundTrip.NewDir("badparent");
        var ex = Assert.Throws<DumperException>(() => Criu.PreDump(new ClockOnlyHost(k).AsKernelApi(),
            new DumpOptions { Pid = 420, ImagesDir = Path.Combine(baseDir, "a"), PrevImagesDir = "../nope" }));
        Assert.Contains("does not exist", ex.Message);
        Directory.CreateDirectory(Path.Combine(baseDir, "incomplete"));
        File.WriteAllText(Path.Combine(baseDir, "incomplete", ImageNames.IncompleteMarker), "x");
        ex = Assert.Throws<DumperException>(() => Criu.PreDump(new ClockOnlyHost(k).AsKernelApi(),
            new DumpOptions { Pid = 420, ImagesDir = Path.Combine(baseDir, "b"), PrevImagesDir = "../incomplete" }));
        Assert.Contains("incomplete", ex.Message);
    }

    [Fact]
    public void PagesNoImageHolds_FailRestore_NamingTheRange()
    {
        var k = RoundTrip.NewKernel();
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("lost", 430);
        ulong a = Procs.Map(t, 8);
        Procs.Fill(t, a, 8, 1);
        var baseDir = RoundTrip.NewDir("lost");
        Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 430, ImagesDir = Path.Combine(baseDir, "pre0"), PageStore = PageStoreOptions.Raw });
        Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 430, ImagesDir = Path.Combine(baseDir, "dump"), PrevImagesDir = "../pre0", TrackMem = true });
        // replace the parent's pagemap by an empty one: the final dump's holes now point nowhere
        using (var d = ImageDirectory.Create(Path.Combine(baseDir, "empty")))
        {
            using (var w = d.BeginPagemap(430, PageStoreOptions.Raw)) w.Finish();
            d.Commit();
        }
        File.Copy(Path.Combine(baseDir, "empty", ImageNames.Pagemap(430)), Path.Combine(baseDir, "pre0", ImageNames.Pagemap(430)), overwrite: true);
        var ex = Assert.Throws<DumperException>(() => Criu.Restore(new ClockOnlyHost(new Kernel(k.Config)).AsKernelApi(), new RestoreOptions { ImagesDir = Path.Combine(baseDir, "dump") }));
        Assert.NotNull(ex.RangeStart);
        Assert.Contains($"0x{a:x}", ex.Message);
    }

    /// <summary>Random writes, random pre-dump points: the final restore holds every last write.</summary>
    [Theory]
    [InlineData("x86_64")]
    [InlineData("arm64")]
    public void RandomWriteSchedules_NeverLoseAWrite(string arch)
    {
        // Six schedules from a fixed seed per architecture, so every run checks the same ones.
        var seeds = new Random(arch == "x86_64" ? 20131 : 20132);
        for (int i = 0; i < 6; i++)
        {
            int seed = seeds.Next();
            Assert.True(RunSchedule(arch, seed), $"schedule {seed} lost a write");
        }
    }

    private static bool RunSchedule(string arch, int seed)
    {
        var rnd = new Random(seed);
        var k = RoundTrip.NewKernel(arch);
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("sched", 440);
        int ps = k.Arch.PageSize;
        var regions = new List<(ulong Va, ulong Pages)>();
        for (int i = 0; i < 3; i++) { ulong p = (ulong)rnd.Next(1, 24); regions.Add((Procs.Map(t, p), p)); }
        var baseDir = RoundTrip.NewDir("sched");
        string? prev = null;
        int pre = 0;
        for (int step = 0; step < 40; step++)
        {
            int op = rnd.Next(10);
            var (va, pages) = regions[rnd.Next(regions.Count)];
            ulong at = va + (ulong)rnd.Next((int)pages) * (ulong)ps + (ulong)rnd.Next(ps / 8) * 8;
            if (op < 6) Procs.Touch(t, at, (ulong)rnd.NextInt64());
            else if (op == 6) t.Madvise(at & ~(ulong)(ps - 1), (ulong)ps, Madvise.DontNeed);
            else if (op == 7) t.Madvise(at & ~(ulong)(ps - 1), (ulong)ps, Madvise.PageOut);
            else if (op == 8 && regions.Count < 6) { ulong p = (ulong)rnd.Next(1, 8); regions.Add((Procs.Map(t, p), p)); }
            else
            {
                string d = Path.Combine(baseDir, $"pre{pre}");
                Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 440, ImagesDir = d, PrevImagesDir = prev, PageStore = rnd.Next(2) == 0 ? PageStoreOptions.Raw : PageStoreOptions.Lz4() });
                prev = $"../pre{pre++}";
            }
        }
        var expected = RoundTrip.Snapshot(k, 440);
        Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 440, ImagesDir = Path.Combine(baseDir, "dump"), PrevImagesDir = prev, TrackMem = true });
        var dest = new Kernel(k.Config);
        Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = Path.Combine(baseDir, "dump") });
        RoundTrip.AssertSame(expected, dest);
        return true;
    }
}

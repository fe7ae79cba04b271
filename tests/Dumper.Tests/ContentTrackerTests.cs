using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>The content tracker on the simulator, checked against the kernel's own soft-dirty tracking.</summary>
public class ContentTrackerTests
{
    private static (Kernel K, SimTask T, ulong A) Build(int pid)
    {
        var k = RoundTrip.NewKernel();
        var t = Procs.Rich(k, pid);
        ulong a = Procs.Map(t, 64);
        Procs.Fill(t, a, 64, 7);
        return (k, t, a);
    }

    /// <summary>Between the two pre-dumps: pages 0–9 get new bytes, pages 20–24 are written with the bytes they hold.</summary>
    private static void Mutate(SimTask t, ulong a)
    {
        int ps = t.Kernel.Arch.PageSize;
        for (ulong p = 0; p < 10; p++)
            Procs.Touch(t, a + p * (ulong)ps, 0xC0FFEE00 + p);
        var buf = new byte[ps];
        for (ulong p = 20; p < 25; p++)
        {
            Assert.True(t.Read(a + p * (ulong)ps, buf).Ok);
            Assert.True(t.Write(a + p * (ulong)ps, buf).Ok);
        }
    }

    private static (DumpResult Second, HashSet<ulong> Present) Run(TrackerKind tracker, int pid)
    {
        var (k, t, a) = Build(pid);
        var host = new ClockOnlyHost(k);
        string dir = RoundTrip.NewDir("content");
        Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = pid, ImagesDir = Path.Combine(dir, "1"), Tracker = tracker });
        Mutate(t, a);
        var second = Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = pid, ImagesDir = Path.Combine(dir, "2"), PrevImagesDir = "../1", Tracker = tracker });
        var present = new HashSet<ulong>();
        var pm = ImageSet.Open(Path.Combine(dir, "2")).ReadPagemap(pid);
        foreach (var e in pm.Entries)
            if ((PagemapImage.FlagsOf(e) & PagemapFlags.Present) != 0)
                for (ulong i = 0; i < PagemapImage.NrPages(e); i++)
                    present.Add(e.Vaddr + (i << 12));
        return (second, present);
    }

    [Fact]
    public void ContentTracker_WritesWhatSoftDirtyWrites_MinusPagesWrittenWithTheSameBytes()
    {
        var (sd, sdPages) = Run(TrackerKind.SoftDirty, 420);
        var (ct, ctPages) = Run(TrackerKind.Content, 420);
        Assert.Equal(TrackerKind.Content, ct.Tracker);
        var (_, _, a) = Build(420);
        var unchanged = Enumerable.Range(20, 5).Select(p => a + (ulong)p * 4096).ToHashSet();
        Assert.True(unchanged.IsSubsetOf(sdPages), "soft-dirty should report the pages written with the same bytes");
        Assert.Equal(sdPages.Except(unchanged).Order(), ctPages.Order());
        Assert.Equal(sd.Stats.PagesWritten - 5, ct.Stats.PagesWritten);
        Assert.Equal(sd.Stats.PagesSkippedParent + 5, ct.Stats.PagesSkippedParent);
    }

    [Fact]
    public void ContentTracker_SpansOfSeveralReadChunks_FindExactlyTheChangedPages()
    {
        // 600 pages in one VMA: the collector reads 1 MiB (256 pages) at a time and reads the next
        // chunk while digesting the current one; changes on both sides of each chunk boundary
        // must be found, and nothing else.
        var k = RoundTrip.NewKernel();
        var t = Procs.Rich(k, 450);
        ulong a = Procs.Map(t, 600);
        Procs.Fill(t, a, 600, 11);
        var host = new ClockOnlyHost(k);
        string dir = RoundTrip.NewDir("content-chunks");
        Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 450, ImagesDir = Path.Combine(dir, "1"), Tracker = TrackerKind.Content });
        ulong[] changed = [0, 255, 256, 257, 511, 512, 599];
        foreach (var p in changed)
            Procs.Touch(t, a + p * 4096 + 8, 0xFEED0000 + p);
        Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 450, ImagesDir = Path.Combine(dir, "2"), PrevImagesDir = "../1", Tracker = TrackerKind.Content });
        var present = new List<ulong>();
        foreach (var e in ImageSet.Open(Path.Combine(dir, "2")).ReadPagemap(450).Entries)
            if ((PagemapImage.FlagsOf(e) & PagemapFlags.Present) != 0)
                for (ulong i = 0; i < PagemapImage.NrPages(e); i++)
                    if (e.Vaddr + (i << 12) >= a && e.Vaddr + (i << 12) < a + 600 * 4096)
                        present.Add((e.Vaddr + (i << 12) - a) >> 12);
        Assert.Equal(changed, present.Order());
    }

    [Fact]
    public void ContentTracker_ChainRestoresByteIdentical()
    {
        var (k, t, a) = Build(430);
        var (steps, _, _) = RoundTrip.DumpRestore(new ClockOnlyHost(k), 430, 3, PageStoreOptions.Lz4(),
            i => Procs.Touch(t, a + (ulong)i * 4096 * 3, 0xABC0 + (ulong)i), TrackerKind.Content);
        Assert.All(steps, s => Assert.Equal(TrackerKind.Content, s.Tracker));
        // After the first pre-dump only the one touched page (and whatever the task itself changed) is written.
        Assert.True(steps[1].Stats.PagesWritten < steps[0].Stats.PagesWritten / 10, $"{steps[1].Stats.PagesWritten} vs {steps[0].Stats.PagesWritten}");
    }

    [Fact]
    public void ContentTracker_WithoutParentDigests_DumpsEveryPage()
    {
        var (k, _, _) = Build(440);
        var host = new ClockOnlyHost(k);
        string dir = RoundTrip.NewDir("content-noparent");
        var first = Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 440, ImagesDir = Path.Combine(dir, "1"), Tracker = TrackerKind.SoftDirty });
        var second = Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 440, ImagesDir = Path.Combine(dir, "2"), PrevImagesDir = "../1", Tracker = TrackerKind.Content });
        Assert.Equal(first.Stats.PagesWritten, second.Stats.PagesWritten);
        Assert.True(File.Exists(Path.Combine(dir, "2", ImageNames.PageDigests(440))));
    }
}

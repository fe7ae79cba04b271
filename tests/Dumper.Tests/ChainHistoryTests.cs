using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// Elision and deltas of dumps run as processes of their own (the CLI verbs): each dump gets a
/// fresh history (<see cref="SentPages.FromImages"/>) that it rebuilds from its parent chain on
/// disk — digests from page-digests-PID.img, delta bases read back from the chain's pages.
/// </summary>
public class ChainHistoryTests
{
    private const int Pid = 310;
    private const int Ps = 4096;

    private static DumpOptions At(string root, int i, int? parent, SentPages? history) => new()
    {
        Pid = Pid,
        ImagesDir = Path.Combine(root, $"{i}"),
        PrevImagesDir = parent is int p ? $"../{p}" : null,
        PageStore = PageStoreOptions.Lz4(),
        History = history,
        TrackMem = true,
    };

    private static PagemapFlags FlagsAt(string dir, ulong va)
    {
        var pm = ImageSet.Open(dir).ReadPagemap(Pid);
        return PagemapImage.FlagsOf(pm.Entries[pm.FindEntry(va)]);
    }

    private static void RestoresExactly(string top, List<TaskSnapshot> before)
    {
        var dest = RoundTrip.NewKernel("x86_64");
        var rr = Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = top });
        Assert.True(rr.Stats.VmasVerified > 0);
        RoundTrip.AssertSame(before, dest);
    }

    /// <summary>
    /// 64 written pages; between dumps page 3 is rewritten with its own bytes, pages 10..13 get
    /// one word changed, page 20 new bytes: each dump with a history of its own.
    /// </summary>
    [Fact]
    public void FreshHistories_RebuiltFromTheChain_ElideAndSendDeltas_AndRestoreByteForByte()
    {
        var k = RoundTrip.NewKernel("x86_64");
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("chain", Pid);
        ulong heap = Procs.Map(t, 64);
        Procs.Fill(t, heap, 64, 5);
        string root = RoundTrip.NewDir("chainhist");
        var rnd = new Random(9);
        var steps = new List<DumpResult>();
        List<TaskSnapshot>? before = null;
        for (int i = 1; i <= 4; i++)
        {
            var o = At(root, i, i > 1 ? i - 1 : null, SentPages.FromImages(elide: true, cacheBytes: 64L << 20));
            if (i < 4)
                steps.Add(Criu.PreDump(host.AsKernelApi(), o));
            else
            {
                before = RoundTrip.Snapshot(k, Pid);
                steps.Add(Criu.Dump(host.AsKernelApi(), o));
                break;
            }
            // Every dump records the digests of what its pagemap covers, for the next one.
            Assert.True(File.Exists(Path.Combine(root, $"{i}", ImageNames.PageDigests(Pid))));
            var same = new byte[Ps];
            Assert.True(k.Proc.ReadMemory(Pid, heap + 3UL * Ps, same).Ok);
            Assert.True(t.Write(heap + 3UL * Ps, same).Ok);
            for (int p = 10; p < 14; p++)
                Procs.Touch(t, heap + (ulong)(p * Ps) + 128, (ulong)rnd.NextInt64());
            var fresh = new byte[Ps];
            rnd.NextBytes(fresh);
            Assert.True(t.Write(heap + 20UL * Ps, fresh).Ok);
        }
        Assert.Equal(0UL, steps[0].Stats.Delta!.PagesElided);
        foreach (var s in steps.Skip(1))
        {
            var d = s.Stats.Delta!;
            // Page 3 and the two [vdso] pages; pages 10..13 as deltas; page 20's delta does not pay.
            Assert.Equal(3UL, d.PagesElided);
            Assert.Equal(4UL, d.PagesDelta);
            Assert.Equal(5UL, d.CacheHits);
            Assert.Equal(1UL, d.Overflows);
            Assert.Equal(0UL, d.PagesNoDigest);
            Assert.True(d.BytesSaved > 0);
        }
        Assert.Equal(PagemapFlags.Parent, FlagsAt(Path.Combine(root, "2"), heap + 3UL * Ps));
        Assert.Equal(PagemapFlags.Delta, FlagsAt(Path.Combine(root, "3"), heap + 10UL * Ps));
        Assert.Equal(PagemapFlags.Delta, FlagsAt(Path.Combine(root, "4"), heap + 11UL * Ps));
        RestoresExactly(Path.Combine(root, "4"), before!);
        Directory.Delete(root, true);
    }

    /// <summary>
    /// Pre-dumps 1 and 2, then a dump whose parent is 1, not the last pre-dump: page P went from
    /// version a (in 1) to b (in 2) and is written with b again; page Q went from a to b and then
    /// had one word changed. Against the last pre-dump's history P would be elided and Q sent as
    /// a small delta, and both would restore wrong on top of 1: the history must be 1's.
    /// </summary>
    [Fact]
    public void AParentThatIsNotTheLastDump_IsWhatPagesAreComparedWith()
    {
        var k = RoundTrip.NewKernel("x86_64");
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("skip", Pid);
        ulong heap = Procs.Map(t, 16);
        Procs.Fill(t, heap, 16, 3);
        string root = RoundTrip.NewDir("chainparent");
        var rnd = new Random(4);
        ulong pva = heap + 5UL * Ps, qva = heap + 9UL * Ps;
        SentPages Fresh() => SentPages.FromImages(elide: true, cacheBytes: 64L << 20);
        Criu.PreDump(host.AsKernelApi(), At(root, 1, null, Fresh()));
        var b = new byte[Ps];
        rnd.NextBytes(b);
        Assert.True(t.Write(pva, b).Ok);
        var qb = new byte[Ps];
        rnd.NextBytes(qb);
        Assert.True(t.Write(qva, qb).Ok);
        Criu.PreDump(host.AsKernelApi(), At(root, 2, 1, Fresh()));
        Assert.True(t.Write(pva, b).Ok);
        Procs.Touch(t, qva + 64, 0x1234_5678_9abc_def0);
        var before = RoundTrip.Snapshot(k, Pid);
        var final = Criu.Dump(host.AsKernelApi(), At(root, 3, 1, Fresh()));
        string top = Path.Combine(root, "3");
        Assert.Equal(PagemapFlags.Present, FlagsAt(top, pva));
        Assert.Equal(PagemapFlags.Present, FlagsAt(top, qva));
        Assert.Equal(0UL, final.Stats.Delta!.PagesDelta);
        RestoresExactly(top, before);
        Directory.Delete(root, true);
    }

    [Fact]
    public void AParentWithoutDigests_CannotElide_AndSaysSo_UnlessTheBasesAreRead()
    {
        var k = RoundTrip.NewKernel("x86_64");
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("nodig", Pid);
        ulong heap = Procs.Map(t, 8);
        Procs.Fill(t, heap, 8, 6);
        string root = RoundTrip.NewDir("chainnodig");
        // Dumped without a history: no page-digests image.
        Criu.PreDump(host.AsKernelApi(), At(root, 1, null, null));
        Assert.False(File.Exists(Path.Combine(root, "1", ImageNames.PageDigests(Pid))));
        var same = new byte[Ps];
        for (int p = 0; p < 4; p++)
        {
            Assert.True(k.Proc.ReadMemory(Pid, heap + (ulong)(p * Ps), same).Ok);
            Assert.True(t.Write(heap + (ulong)(p * Ps), same).Ok);
        }
        var elideOnly = Criu.PreDump(host.AsKernelApi(), At(root, 2, 1, SentPages.FromImages(elide: true, cacheBytes: 0))).Stats.Delta!;
        Assert.Equal(0UL, elideOnly.PagesElided);
        // Pages 0..3 and the two [vdso] pages were written with the parent's bytes, unknown to it.
        Assert.Equal(6UL, elideOnly.PagesNoDigest);
        Assert.Equal(6UL, ImageSet.Open(Path.Combine(root, "2")).ReadDumpStats()!.PagesNoDigest);

        // With deltas, the bases read from the chain give the digests.
        string again = RoundTrip.NewDir("chainnodig2");
        Criu.PreDump(host.AsKernelApi(), At(again, 1, null, null));
        for (int p = 0; p < 4; p++)
        {
            Assert.True(k.Proc.ReadMemory(Pid, heap + (ulong)(p * Ps), same).Ok);
            Assert.True(t.Write(heap + (ulong)(p * Ps), same).Ok);
        }
        var withBases = Criu.PreDump(host.AsKernelApi(), At(again, 2, 1, SentPages.FromImages(elide: true, cacheBytes: 1L << 20))).Stats.Delta!;
        Assert.Equal(6UL, withBases.PagesElided);
        Assert.Equal(0UL, withBases.PagesNoDigest);
        Directory.Delete(root, true);
        Directory.Delete(again, true);
    }

    [Fact]
    public void ASmallDeltaCache_ReadsAtMostThatManyBases()
    {
        var k = RoundTrip.NewKernel("x86_64");
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("small", Pid);
        ulong heap = Procs.Map(t, 32);
        Procs.Fill(t, heap, 32, 8);
        string root = RoundTrip.NewDir("chainsmall");
        Criu.PreDump(host.AsKernelApi(), At(root, 1, null, SentPages.FromImages(elide: false, cacheBytes: 4 * Ps)));
        for (int p = 0; p < 32; p++)
            Procs.Touch(t, heap + (ulong)(p * Ps) + 8, 0xfeed_0000UL + (ulong)p);
        var before = RoundTrip.Snapshot(k, Pid);
        var d = Criu.Dump(host.AsKernelApi(), At(root, 2, 1, SentPages.FromImages(elide: false, cacheBytes: 4 * Ps))).Stats.Delta!;
        // Four bases held: the other written pages (the heap's and the two [vdso] pages) are misses.
        Assert.Equal(4UL, d.CacheHits);
        Assert.Equal(34UL, d.CacheHits + d.CacheMisses);
        RestoresExactly(Path.Combine(root, "2"), before);
        Directory.Delete(root, true);
    }

    /// <summary>
    /// A dump run alone seeds its bases once per batch of the pipe: the pages change, but what it
    /// learnt about deltas so far (here the stored ratio) must carry on to the next batch.
    /// </summary>
    [Fact]
    public void SeedingTheNextBatch_KeepsWhatWasLearntAboutDeltas()
    {
        var h = SentPages.FromImages(elide: true, cacheBytes: 1 << 20);
        h.NoteDeltaBlocks(128 << 10, 64 << 10);
        Assert.Equal(0.5, h.DeltaStoredRatio);
        using var src = new SentPages.ChainSource(null, null);
        h.Seed(src, Pid, PagemapImage.AllInParent("parent"), [(0x10000UL, 4)]);
        Assert.Equal(0.5, h.DeltaStoredRatio);
    }
}

using System.Diagnostics;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>Pre-dumps that elide unchanged pages and send re-dirtied ones as deltas, restored byte for byte.</summary>
public class ElisionDeltaTests
{
    private const int Pid = 300;

    private sealed record Chain(string Root, List<string> Dirs, List<DumpResult> Steps, List<TaskSnapshot> Before, ulong Heap);

    /// <summary>
    /// 64 written pages; between dumps page 3 is rewritten with its own bytes (unchanged), pages
    /// 10..13 get one word changed (re-dirtied), page 20 is rewritten whole with new bytes.
    /// </summary>
    private static Chain Run(string arch, SentPages? history, int preDumps = 3, PageStoreOptions? store = null)
    {
        var k = RoundTrip.NewKernel(arch);
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("delta", Pid);
        int ps = k.Arch.PageSize;
        ulong heap = Procs.Map(t, 64);
        Procs.Fill(t, heap, 64, 5);
        var root = RoundTrip.NewDir("delta");
        var dirs = new List<string>();
        var steps = new List<DumpResult>();
        var rnd = new Random(9);
        for (int i = 1; i <= preDumps + 1; i++)
        {
            string dir = Path.Combine(root, i.ToString(System.Globalization.CultureInfo.InvariantCulture));
            var o = new DumpOptions
            {
                Pid = Pid, ImagesDir = dir, PrevImagesDir = i > 1 ? $"../{i - 1}" : null,
                PageStore = store ?? PageStoreOptions.Lz4(), History = history, TrackMem = true,
            };
            List<TaskSnapshot>? before = null;
            if (i <= preDumps)
                steps.Add(Criu.PreDump(host.AsKernelApi(), o));
            else
            {
                before = RoundTrip.Snapshot(k, Pid);
                steps.Add(Criu.Dump(host.AsKernelApi(), o));
            }
            dirs.Add(dir);
            if (before is not null)
                return new Chain(root, dirs, steps, before, heap);
            // Page 3: the same bytes again (the tracker sees a write).
            var same = new byte[ps];
            Assert.True(k.Proc.ReadMemory(Pid, heap + 3UL * (ulong)ps, same).Ok);
            Assert.True(t.Write(heap + 3UL * (ulong)ps, same).Ok);
            for (int p = 10; p < 14; p++)
                Procs.Touch(t, heap + (ulong)(p * ps) + 128, (ulong)rnd.NextInt64());
            var fresh = new byte[ps];
            rnd.NextBytes(fresh);
            Assert.True(t.Write(heap + 20UL * (ulong)ps, fresh).Ok);
        }
        throw new InvalidOperationException("unreachable");
    }

    [Theory]
    [InlineData("x86_64")]
    [InlineData("arm64")]
    public void ElisionAndDeltas_RestoreByteForByte(string arch)
    {
        var history = new SentPages(elide: true, cacheBytes: 64L << 20);
        var chain = Run(arch, history);
        var second = chain.Steps[1].Stats.Delta!;
        // Page 3 and the two [vdso] pages, which every dump takes whole and which never change.
        Assert.Equal(3UL, second.PagesElided);
        Assert.Equal(4UL, second.PagesDelta);
        Assert.Equal(5UL, second.CacheHits);          // pages 10..13 and 20
        Assert.Equal(1UL, second.Overflows);          // page 20: a delta of a new page does not pay
        Assert.True(second.BytesSaved > 0);
        // The final dump sieves the same way: page 3 and [vdso] in-parent, pages 10..13 as deltas.
        var last = chain.Steps[^1].Stats.Delta!;
        Assert.Equal(3UL, last.PagesElided);
        Assert.Equal(4UL, last.PagesDelta);
        var top = ImageSet.Open(chain.Dirs[^1]).ReadPagemap(Pid);
        Assert.Equal(PagemapFlags.Parent, PagemapImage.FlagsOf(top.Entries[top.FindEntry(chain.Heap + 3UL * 4096)]));
        Assert.Equal(PagemapFlags.Delta, PagemapImage.FlagsOf(top.Entries[top.FindEntry(chain.Heap + 10UL * 4096)]));

        var set = ImageSet.Open(chain.Dirs[1]);
        var pm = set.ReadPagemap(Pid);
        var flagsAt = (ulong va) => PagemapImage.FlagsOf(pm.Entries[pm.FindEntry(va)]);
        int ps = 4096;
        Assert.Equal(PagemapFlags.Parent, flagsAt(chain.Heap + 3UL * (ulong)ps));
        Assert.Equal(PagemapFlags.Delta, flagsAt(chain.Heap + 10UL * (ulong)ps));
        Assert.Equal(PagemapFlags.Present, flagsAt(chain.Heap + 20UL * (ulong)ps));
        Assert.True(File.Exists(Path.Combine(chain.Dirs[1], "deltas-1.img")));

        var dest = RoundTrip.NewKernel(arch);
        var rr = Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = chain.Dirs[^1] });
        Assert.True(rr.Stats.VmasVerified > 0);
        RoundTrip.AssertSame(chain.Before, dest);
        Directory.Delete(chain.Root, true);
    }

    /// <summary>
    /// Two pre-dumps and a final dump of 16 pages. Before the final dump: pages 0..3 are written
    /// with the bytes the chain holds (4..7 were last sent by the first pre-dump, 0..3 by the
    /// second), pages 8..11 go back to their first pre-dump's bytes after the second pre-dump
    /// sent other bytes (a stale digest would call them unchanged), pages 12..15 are untouched.
    /// </summary>
    /// <summary>Restores the chain ending in <paramref name="top"/> into a fresh kernel, checks it verified and equals <paramref name="before"/>.</summary>
    private static void RestoresExactly_ThenDelete(string top, string root, List<TaskSnapshot> before)
    {
        var dest = RoundTrip.NewKernel("x86_64");
        var rr = Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = top });
        Assert.True(rr.Stats.VmasVerified > 0);
        RoundTrip.AssertSame(before, dest);
        Directory.Delete(root, true);
    }

    private static (DumpResult Final, string Root, string Top, List<TaskSnapshot> Before, ulong Heap) FinalDumpChain(SentPages? history)
    {
        var k = RoundTrip.NewKernel("x86_64");
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("final", Pid);
        const int ps = 4096;
        ulong heap = Procs.Map(t, 16);
        var rnd = new Random(17);
        byte[][] first = new byte[16][];
        for (int p = 0; p < 16; p++)
        {
            first[p] = new byte[ps];
            rnd.NextBytes(first[p]);
            Assert.True(t.Write(heap + (ulong)(p * ps), first[p]).Ok);
        }
        string root = RoundTrip.NewDir("final");
        DumpOptions At(int i) => new()
        {
            Pid = Pid, ImagesDir = Path.Combine(root, $"{i}"), PrevImagesDir = i > 1 ? $"../{i - 1}" : null,
            PageStore = PageStoreOptions.Lz4(), History = history,
        };
        Criu.PreDump(host.AsKernelApi(), At(1));
        var second = new byte[ps];
        for (int p = 0; p < 4; p++)
            Assert.True(t.Write(heap + (ulong)(p * ps), first[p]).Ok);
        for (int p = 8; p < 12; p++)
        {
            rnd.NextBytes(second);
            Assert.True(t.Write(heap + (ulong)(p * ps), second).Ok);
        }
        Criu.PreDump(host.AsKernelApi(), At(2));
        for (int p = 0; p < 12; p++)
            Assert.True(t.Write(heap + (ulong)(p * ps), first[p]).Ok);
        var before = RoundTrip.Snapshot(k, Pid);
        var final = Criu.Dump(host.AsKernelApi(), At(3));
        return (final, root, Path.Combine(root, "3"), before, heap);
    }

    [Fact]
    public void FinalDump_ElidesPagesRewrittenWithTheChainsBytes_AndRestoresByteForByte()
    {
        var plain = FinalDumpChain(null);
        var elided = FinalDumpChain(new SentPages(elide: true, cacheBytes: 0));
        // Pages 0..7 and the two [vdso] pages are in-parent; 8..11 differ from what the chain
        // holds now (the second pre-dump's bytes) and are written.
        Assert.Equal(10UL, elided.Final.Stats.Delta!.PagesElided);
        Assert.Equal(plain.Final.Stats.PagesWritten - 10, elided.Final.Stats.PagesWritten);
        var pm = ImageSet.Open(elided.Top).ReadPagemap(Pid);
        for (int p = 0; p < 16; p++)
            Assert.Equal(p is >= 8 and < 12 ? PagemapFlags.Present : PagemapFlags.Parent,
                PagemapImage.FlagsOf(pm.Entries[pm.FindEntry(elided.Heap + (ulong)p * 4096)]));
        RestoresExactly_ThenDelete(plain.Top, plain.Root, plain.Before);
        RestoresExactly_ThenDelete(elided.Top, elided.Root, elided.Before);
    }

    [Fact]
    public void FinalDump_WithADelta_RestoresByteForByte()
    {
        // Pages 8..11 were cached as the second pre-dump sent them; going back to the first
        // pre-dump's random bytes, their deltas do not pay and they go whole: still exact.
        var c = FinalDumpChain(new SentPages(elide: true, cacheBytes: 64L << 20));
        Assert.Equal(10UL, c.Final.Stats.Delta!.PagesElided);
        RestoresExactly_ThenDelete(c.Top, c.Root, c.Before);
    }

    [Fact]
    public void FinalDump_WithElisionOff_SendsEmptyDeltas_AndRestoresByteForByte()
    {
        // Pages rewritten with the chain's bytes become deltas of 0 bytes: no deltas file at all.
        var c = FinalDumpChain(new SentPages(elide: false, cacheBytes: 64L << 20));
        Assert.True(c.Final.Stats.Delta!.PagesDelta >= 8);
        RestoresExactly_ThenDelete(c.Top, c.Root, c.Before);
    }

    [Fact]
    public void FinalDump_ACorruptDeltasFile_FailsTheRestore()
    {
        // The manifest's checksums catch the changed file before any page is applied (a delta
        // applied to a wrong base fails its page checksum, naming the range: ImageFormat's DeltaTests).
        var chain = Run("x86_64", new SentPages(elide: true, cacheBytes: 64L << 20));
        string deltas = Directory.GetFiles(chain.Dirs[^1], "deltas-*.img").Single();
        var bytes = File.ReadAllBytes(deltas);
        bytes[^1] ^= 0x5a;
        File.WriteAllBytes(deltas, bytes);
        var dest = RoundTrip.NewKernel("x86_64");
        var e = Assert.Throws<DumperException>(() => Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = chain.Dirs[^1] }));
        Assert.Contains(Path.GetFileName(deltas), e.Message);
        Directory.Delete(chain.Root, true);
    }

    [Fact]
    public void Deltas_AreNotTaken_WhereTheBlockStoresThePagesForLess()
    {
        // Sixteen copies of one random page: alone each compresses to nothing (4 KiB), in one
        // 64 KiB block they cost about one page together. 100 changed bytes per page make a delta
        // far smaller than the page alone, but sixteen of them cost more than the block.
        long Bytes(SentPages history)
        {
            var k = RoundTrip.NewKernel("x86_64");
            var host = new ClockOnlyHost(k);
            var t = k.Spawn("blocks", Pid);
            const int ps = 4096;
            ulong heap = Procs.Map(t, 16);
            var page = new byte[ps];
            new Random(5).NextBytes(page);
            for (int p = 0; p < 16; p++)
                Assert.True(t.Write(heap + (ulong)(p * ps), page).Ok);
            string root = RoundTrip.NewDir("blocks");
            DumpOptions At(int i) => new()
            {
                Pid = Pid, ImagesDir = Path.Combine(root, $"{i}"), PrevImagesDir = i > 1 ? $"../{i - 1}" : null,
                PageStore = PageStoreOptions.Lz4(), History = history,
            };
            Criu.PreDump(host.AsKernelApi(), At(1));
            for (int b = 0; b < 100; b++)
                page[b * 40] ^= 0x5a;
            for (int p = 0; p < 16; p++)
                Assert.True(t.Write(heap + (ulong)(p * ps), page).Ok);
            Criu.PreDump(host.AsKernelApi(), At(2));
            // The page-carrying images (stats differ by their delta counters, not by pages).
            return new DirectoryInfo(Path.Combine(root, "2")).EnumerateFiles()
                .Where(f => f.Name.Contains("pagemap", StringComparison.Ordinal) || f.Name.StartsWith("pages-", StringComparison.Ordinal) || f.Name.StartsWith("deltas-", StringComparison.Ordinal))
                .Sum(f => f.Length);
        }
        long without = Bytes(new SentPages(elide: true, cacheBytes: 0));
        long with = Bytes(new SentPages(elide: true, cacheBytes: 64 << 20));
        Assert.True(with <= without, $"with deltas {with} B, without {without} B");
    }

    [Fact]
    public void WithBothOff_TheImagesAreTheSameAsWithoutHistory()
    {
        var a = Run("x86_64", null);
        var b = Run("x86_64", new SentPages(elide: false, cacheBytes: 0));
        for (int i = 0; i < a.Dirs.Count; i++)
            foreach (var f in Directory.GetFiles(a.Dirs[i]).Select(Path.GetFileName).Where(n => n!.StartsWith("pages-") || n.StartsWith("pagemap-")))
                Assert.Equal(File.ReadAllBytes(Path.Combine(a.Dirs[i], f!)), File.ReadAllBytes(Path.Combine(b.Dirs[i], f!)));
        Assert.Empty(Directory.GetFiles(b.Root, "deltas-*", SearchOption.AllDirectories));
        Directory.Delete(a.Root, true);
        Directory.Delete(b.Root, true);
    }

    [Fact]
    public void AHistory_IsTrustedOnlyOnTopOfTheDirectoryItWasLastCommittedWith()
    {
        var h = new SentPages(elide: true, cacheBytes: 1L << 20);
        var page = new byte[4096];
        page[7] = 7;
        h.Begin(null, "/imgs/1");
        h.Sent(1, 0x1000, 42, page, 100);
        h.Commit("/imgs/1", new DeltaCounters());
        h.Begin("/imgs/1", "/imgs/2");                       // on top of its head: kept
        Assert.True(h.TryGetDigest(1, 0x1000, out ulong d) && d == 42);
        Assert.Equal(page, h.Lookup(1, 0x1000, out _).ToArray());
        // /imgs/2 never committed (a failed pre-dump): nothing is trusted on top of /imgs/1 again.
        h.Begin("/imgs/1", "/imgs/3");
        Assert.False(h.TryGetDigest(1, 0x1000, out _));
        Assert.True(h.Lookup(1, 0x1000, out _).IsEmpty);
        h.Sent(1, 0x2000, 43, page, 100);
        h.Commit("/imgs/3", new DeltaCounters());
        h.Begin("/other/1", "/other/2");                    // another chain
        Assert.False(h.TryGetDigest(1, 0x2000, out _));
    }

    [Fact]
    public void DeltasThatCostMoreTimeThanTheySave_PauseThenComeBack()
    {
        var h = new SentPages(elide: true, cacheBytes: 1L << 20);
        h.Begin(null, "/imgs/1");
        Assert.True(h.DeltaActive);
        h.Commit("/imgs/1", new DeltaCounters { DeltaCostNs = 2_000, DeltaGainNs = 1_000 });
        for (int i = 2; i <= 1 + SentPages.DeltaPauseIterations; i++)
        {
            h.Begin($"/imgs/{i - 1}", $"/imgs/{i}");
            Assert.False(h.DeltaActive);
            h.Commit($"/imgs/{i}", new DeltaCounters());
        }
        h.Begin("/imgs/4", "/imgs/5");
        Assert.True(h.DeltaActive);
        // Paying iterations keep them on.
        h.Commit("/imgs/5", new DeltaCounters { DeltaCostNs = 1_000, DeltaGainNs = 9_000 });
        h.Begin("/imgs/5", "/imgs/6");
        Assert.True(h.DeltaActive);
        // Within an iteration: once the cost runs past the gain by more than the probe, the
        // next window of pages goes whole, then two, four, …; a paying window resets that.
        h.Account(SentPages.DeltaProbeNs, 0);
        Assert.True(h.DeltaActive);
        h.Account(1, 0);
        Assert.False(h.DeltaActive);
        h.WindowDone();
        Assert.True(h.DeltaActive);
        h.Account(SentPages.DeltaProbeNs + 1, 0);
        h.WindowDone();
        Assert.False(h.DeltaActive);
        h.WindowDone();
        Assert.True(h.DeltaActive);
        h.Account(10, 20);                                   // pays: the back-off starts at one window again
        h.Account(SentPages.DeltaProbeNs + 11, 0);
        h.WindowDone();
        Assert.True(h.DeltaActive);
        h.Account(SentPages.DeltaProbeNs + 1, 0);
        Assert.False(h.DeltaActive);
        // The next iteration starts afresh.
        h.Commit("/imgs/6", new DeltaCounters { DeltaCostNs = 1_000, DeltaGainNs = 9_000 });
        h.Begin("/imgs/6", "/imgs/7");
        Assert.True(h.DeltaActive);
    }

    [Fact]
    public void PagesThatCompressBetterThanAnyDelta_AreNotEvenEncoded()
    {
        // Text-like pages compress about 100x in 64 KiB blocks: their shares are below the
        // metadata a delta adds, so a re-dirtied page goes whole and deltas cost no time. Such
        // pages are not even kept in the cache (they would only evict pages whose deltas pay):
        // their re-writes are misses.
        var k = RoundTrip.NewKernel("x86_64");
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("text", Pid);
        const int ps = 4096;
        ulong heap = Procs.Map(t, 64);
        var line = System.Text.Encoding.ASCII.GetBytes("the quick brown fox jumps over the lazy dog; ");
        var page = new byte[ps];
        for (int i = 0; i < ps; i++)
            page[i] = line[i % line.Length];
        for (int p = 0; p < 64; p++)
            Assert.True(t.Write(heap + (ulong)(p * ps), page).Ok);
        string root = RoundTrip.NewDir("text");
        var history = new SentPages(elide: true, cacheBytes: 64L << 20);
        DumpOptions At(int i) => new()
        {
            Pid = Pid, ImagesDir = Path.Combine(root, $"{i}"), PrevImagesDir = i > 1 ? $"../{i - 1}" : null,
            PageStore = PageStoreOptions.Lz4(), History = history,
        };
        Criu.PreDump(host.AsKernelApi(), At(1));
        for (int p = 0; p < 64; p++)
            Procs.Touch(t, heap + (ulong)(p * ps) + 512, (ulong)p + 1);
        var d = Criu.PreDump(host.AsKernelApi(), At(2)).Stats.Delta!;
        Assert.Equal(0UL, d.CacheHits);
        Assert.Equal(64UL, d.CacheMisses);
        Assert.Equal(0UL, d.PagesDelta);
        Assert.Equal(0UL, d.Overflows);
        Assert.Equal(0UL, d.DeltaCostNs);
        Directory.Delete(root, true);
    }

    [Fact]
    public void ASmallCache_MissesThePagesItCouldNotKeep()
    {
        // Room for 2 pages of the ~70 the first pre-dump sends: the six rewritten heap pages and
        // the two [vdso] pages (taken whole by every dump) all miss and go whole.
        var chain = Run("x86_64", new SentPages(elide: false, cacheBytes: 2 * 4096), preDumps: 2);
        var s = chain.Steps[1].Stats.Delta!;
        Assert.Equal(0UL, s.CacheHits);
        Assert.Equal(8UL, s.CacheMisses);
        Assert.Equal(0UL, s.PagesDelta);
        Directory.Delete(chain.Root, true);
    }

    [Fact]
    public void AFullCache_IsNotFlushedByAScanLargerThanItself()
    {
        // A pre-dump walks memory in address order. With plain LRU, a dirty set larger than the
        // cache evicts each page just before it is written again; with bimodal insertion the
        // pages cached first stay, and one new page in BimodalInsert still enters as most recent.
        var h = new SentPages(elide: false, cacheBytes: 4 * 4096);
        var page = new byte[4096];
        h.Begin(null, "/imgs/1");
        for (ulong p = 0; p < 4 + SentPages.BimodalInsert - 1; p++)
            h.Sent(1, p << 12, p + 1, page, 100);
        Assert.True(h.Lookup(1, 0, out _).IsEmpty);                 // the least recent went first
        for (ulong p = 1; p < 4; p++)
            Assert.False(h.Lookup(1, p << 12, out _).IsEmpty);
        ulong last = 4 + SentPages.BimodalInsert - 2;
        Assert.False(h.Lookup(1, last << 12, out int share).IsEmpty); // the latest scanned page
        Assert.Equal(100, share);
        for (ulong p = 4; p < last; p++)
            Assert.True(h.Lookup(1, p << 12, out _).IsEmpty);
    }

    [Fact]
    public void AFullCache_TakesInAPageWorthMoreThanItsMean_AsMostRecent()
    {
        // A hit saves up to the page's share: a full cache keeps a page worth more than the mean
        // of what it holds, and lets cheaper newcomers evict one another at the least recent end.
        var h = new SentPages(elide: false, cacheBytes: 4 * 4096);
        var page = new byte[4096];
        h.Begin(null, "/imgs/1");
        for (ulong p = 0; p < 4; p++)
            h.Sent(1, p << 12, p + 1, page, 100);
        h.Sent(1, 4 << 12, 5, page, 1000);
        for (ulong p = 5; p < 8; p++)
            h.Sent(1, p << 12, p + 1, page, 60);
        Assert.False(h.Lookup(1, 4 << 12, out int share).IsEmpty);
        Assert.Equal(1000, share);
        // Page 4 evicted page 0, the cheaper page 5 evicted page 1, then 6 evicted 5 and 7 evicted 6.
        for (ulong p = 2; p < 4; p++)
            Assert.False(h.Lookup(1, p << 12, out _).IsEmpty);
        Assert.False(h.Lookup(1, 7 << 12, out _).IsEmpty);
        Assert.True(h.Lookup(1, 0, out _).IsEmpty);
        Assert.True(h.Lookup(1, 1 << 12, out _).IsEmpty);
        Assert.True(h.Lookup(1, 5 << 12, out _).IsEmpty);
        Assert.True(h.Lookup(1, 6 << 12, out _).IsEmpty);
    }

    [Fact]
    public void Crit_DecodesEveryMetadataImageOfADeltaChain()
    {
        var chain = Run("x86_64", new SentPages(elide: true, cacheBytes: 64L << 20));
        foreach (var dir in chain.Dirs)
            foreach (var f in Directory.GetFiles(dir))
            {
                string name = Path.GetFileName(f);
                // pages-N.img and deltas-N.img are raw bytes (crit does not decode pages either);
                // sim-, ext- and page-digests- images have our own magic, which crit rejects by design.
                // The manifest and the parent link are not images.
                if (name.StartsWith("pages-") || name.StartsWith("deltas-") || name.StartsWith("sim-") || name.StartsWith("page-digests-") || name.StartsWith("ext-") || !(name.EndsWith(".img") || name == "stats-dump"))
                    continue;
                var psi = new ProcessStartInfo("/usr/bin/crit", ["decode", "-i", f]) { RedirectStandardOutput = true, RedirectStandardError = true };
                using var p = Process.Start(psi)!;
                p.StandardOutput.ReadToEnd();
                string err = p.StandardError.ReadToEnd();
                p.WaitForExit();
                Assert.True(p.ExitCode == 0, $"crit decode {f}: {err}");
            }
        Directory.Delete(chain.Root, true);
    }

    [Fact]
    public void DeltaStoredRatio_IsLearntFromTheStoredBlocks_AndFadesWithIterations()
    {
        var h = new SentPages(elide: true, cacheBytes: 1 << 20);
        Assert.Equal(1.0, h.DeltaStoredRatio);
        // Less than one block behind it: not trusted yet.
        h.NoteDeltaBlocks(32 << 10, 8 << 10);
        Assert.Equal(1.0, h.DeltaStoredRatio);
        h.NoteDeltaBlocks(96 << 10, 56 << 10);
        Assert.Equal(0.5, h.DeltaStoredRatio);
        // Deltas that barely compress pull the ratio up again.
        h.NoteDeltaBlocks(128 << 10, 128 << 10);
        Assert.Equal(0.75, h.DeltaStoredRatio);
        // Never below the floor, however repetitive the deltas were.
        var g = new SentPages(elide: true, cacheBytes: 1 << 20);
        g.NoteDeltaBlocks(1 << 20, 1 << 10);
        Assert.Equal(SentPages.MinDeltaStoredRatio, g.DeltaStoredRatio);
    }
}

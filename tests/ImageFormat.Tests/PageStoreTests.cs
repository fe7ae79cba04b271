using CriuSharp.ImageFormat.Images;
using FsCheck;
using FsCheck.Fluent;

namespace CriuSharp.ImageFormat.Tests;

public class PageStoreTests
{
    private sealed record Run(ulong Vaddr, byte[] Data, PagemapFlags Kind);

    /// <summary>Ascending runs of present pages, parent holes and lazy pages, from a seed.</summary>
    private static List<Run> Runs(int seed, int maxRuns)
    {
        var rnd = new Random(seed);
        var runs = new List<Run>();
        ulong addr = 0x10000 + (ulong)rnd.Next(16) * 4096;
        int n = 1 + rnd.Next(maxRuns);
        for (int i = 0; i < n; i++)
        {
            int pages = 1 + rnd.Next(rnd.Next(4) == 0 ? 150 : 20);
            var kind = rnd.Next(6) switch { 0 => PagemapFlags.Parent, 1 => PagemapFlags.Lazy, _ => PagemapFlags.Present };
            var data = kind == PagemapFlags.Present ? TestImages.MixedPages(pages, rnd.Next()) : new byte[pages * 4096];
            runs.Add(new Run(addr, data, kind));
            addr += (ulong)data.Length + (ulong)rnd.Next(3) * 4096;
        }
        return runs;
    }

    private static (PagemapImage Map, byte[] Pages, PageWriteStats Stats) Write(List<Run> runs, PageStoreOptions options)
    {
        var pagesOut = new MemoryStream();
        using var w = new PagemapWriter(pagesOut, 1, options, leaveOpen: true);
        foreach (var r in runs)
        {
            if (r.Kind == PagemapFlags.Present) w.AddPresent(r.Vaddr, r.Data, lazy: r.Data.Length % 8192 == 0);
            else if (r.Kind == PagemapFlags.Parent) w.AddParentHole(r.Vaddr, (ulong)r.Data.Length / 4096);
            else w.AddLazy(r.Vaddr, (ulong)r.Data.Length / 4096);
        }
        var stats = w.Finish();
        var bytes = ImageFile.Serialize(ImageKind.Pagemap, w.PagemapMessages());
        var map = PagemapImage.FromContents(ImageFile.Parse(bytes, "pagemap-1.img", ImageKind.Pagemap));
        return (map, pagesOut.ToArray(), stats);
    }

    private static bool ReadsBack(List<Run> runs, PageStoreOptions options)
    {
        var (map, pages, stats) = Write(runs, options);
        using var reader = new PageReader(map, PagesSource.FromMemory(pages));
        var buf = new byte[4096];
        foreach (var r in runs)
        {
            if (r.Kind == PagemapFlags.Present)
            {
                // Whole-run reads take the decompress-into-destination path.
                var whole = new byte[r.Data.Length];
                reader.Read(r.Vaddr, whole);
                if (!whole.AsSpan().SequenceEqual(r.Data))
                    return false;
            }
            for (int off = 0; off < r.Data.Length; off += 4096)
            {
                var loc = reader.Locate(r.Vaddr + (ulong)off);
                if (r.Kind == PagemapFlags.Present)
                {
                    reader.ReadPage(r.Vaddr + (ulong)off, buf);
                    if (!buf.AsSpan().SequenceEqual(r.Data.AsSpan(off, 4096)))
                        return false;
                    bool zero = r.Data.AsSpan(off, 4096).IndexOfAnyExcept((byte)0) < 0;
                    var expected = options.Compression != PageCompression.None && zero ? PageLocation.Zero : PageLocation.Present;
                    if (loc != expected) return false;
                }
                else if (loc != (r.Kind == PagemapFlags.Parent ? PageLocation.Parent : PageLocation.Lazy))
                {
                    return false;
                }
            }
        }
        return (long)stats.BytesStored == pages.Length && map.PagesLength == pages.Length;
    }

    public static TheoryData<PageCompression, int> Configurations()
    {
        var data = new TheoryData<PageCompression, int> { { PageCompression.None, 1 } };
        foreach (var c in new[] { PageCompression.Lz4, PageCompression.Zstd })
            foreach (int b in new[] { 1, 3, 16, 64 })
                data.Add(c, b);
        return data;
    }

    [Theory]
    [MemberData(nameof(Configurations))]
    public void AnyRuns_ReadBackExactly(PageCompression compression, int blockPages)
    {
        var options = new PageStoreOptions { Compression = compression, BlockPages = blockPages };
        Prop.ForAll(Arb.From(Gen.Choose(0, int.MaxValue)), seed => ReadsBack(Runs(seed, 8), options))
            .Check(Config.QuickThrowOnFailure.WithMaxTest(12));
    }

    [Fact]
    public void RawMode_IsCriusLayout_ConcatenatedPresentPages()
    {
        var runs = Runs(7, 10);
        var (_, pages, _) = Write(runs, PageStoreOptions.Raw);
        var expected = runs.Where(r => r.Kind == PagemapFlags.Present).SelectMany(r => r.Data).ToArray();
        Assert.Equal(expected, pages);
    }

    [Fact]
    public void ZeroPages_AreNotStored_AndCounted()
    {
        var data = new byte[10 * 4096];
        data[3 * 4096 + 5] = 1;
        var (map, pages, stats) = Write([new Run(0x1000, data, PagemapFlags.Present)], PageStoreOptions.Lz4(blockPages: 4));
        Assert.Equal(9ul, stats.ZeroPagesSkipped);
        Assert.True(pages.Length < 200, $"{pages.Length} bytes stored for one non-zero page");
        var e = map.Entries[0];
        Assert.True(e.BlockSizes[0] > 0);
        Assert.Equal(0u, e.BlockSizes[1]);
        Assert.Equal(0u, e.BlockSizes[2]);
    }

    [Fact]
    public void IncompressibleBlocks_AreStoredRaw_AndFlagged()
    {
        var data = new byte[8 * 4096];
        new Random(1).NextBytes(data);
        foreach (var c in new[] { PageCompression.Lz4, PageCompression.Zstd })
        {
            var (map, pages, stats) = Write([new Run(0x1000, data, PagemapFlags.Present)], new PageStoreOptions { Compression = c, BlockPages = 4 });
            Assert.Equal(data, pages);
            Assert.Equal(8ul, stats.PagesStoredRaw);
            Assert.Equal(0b11, map.Entries[0].RawBlocks[0]);
        }
    }

    [Theory]
    [InlineData(PageCompression.Lz4, 1)]
    [InlineData(PageCompression.Lz4, 16)]
    [InlineData(PageCompression.Zstd, 64)]
    public void ParallelCompression_GivesTheSameBytes(PageCompression c, int blockPages)
    {
        var data = TestImages.MixedPages(700, 3);
        var seq = Write([new Run(0x1000, data, PagemapFlags.Present)], new PageStoreOptions { Compression = c, BlockPages = blockPages });
        var par = Write([new Run(0x1000, data, PagemapFlags.Present)], new PageStoreOptions { Compression = c, BlockPages = blockPages, Parallelism = 3 });
        Assert.Equal(seq.Pages, par.Pages);
        Assert.Equal(ImageFile.Serialize(ImageKind.Pagemap, [seq.Map.Head, .. seq.Map.Entries]),
                     ImageFile.Serialize(ImageKind.Pagemap, [par.Map.Head, .. par.Map.Entries]));
    }

    [Fact]
    public void RandomAccess_ReadsOnlyTheBlockHoldingThePage()
    {
        var data = TestImages.MixedPages(256, 11);
        var run = new Run(0x100000, data, PagemapFlags.Present);
        var (map, pages, _) = Write([run], PageStoreOptions.Lz4(blockPages: 8));
        // Target: page 100, in block 12. Destroy every other block's bytes.
        int target = 100, block = target / 8;
        var e = map.Entries[0];
        long start = 0;
        for (int b = 0; b < e.BlockSizes.Count; b++)
        {
            if (b != block)
                pages.AsSpan((int)start, (int)e.BlockSizes[b]).Fill(0xAA);
            start += e.BlockSizes[b];
        }
        using var reader = new PageReader(map, PagesSource.FromMemory(pages));
        var buf = new byte[4096];
        reader.ReadPage(run.Vaddr + (ulong)target * 4096, buf);
        Assert.Equal(data.AsSpan(target * 4096, 4096).ToArray(), buf);
        Assert.Equal((ulong)e.BlockSizes[block], reader.Stats.BytesRead);
        Assert.Throws<ImageFormatException>(() => reader.ReadPage(run.Vaddr, buf));
    }

    [Fact]
    public void Writer_RejectsDescendingOrOverlappingEntries()
    {
        using var w = new PagemapWriter(Stream.Null, 1, PageStoreOptions.Raw);
        w.AddPresent(0x2000, new byte[8192]);
        Assert.Throws<ArgumentException>(() => w.AddParentHole(0x3000, 1));
        Assert.Throws<ArgumentException>(() => w.AddPresent(0x1001, new byte[4096]));
    }
}

using System.Diagnostics;

namespace CriuSharp.ImageFormat.Tests;

public sealed class DeltaTests : IDisposable
{
    private readonly TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private const ulong Base = 0x7f00_0000_0000;

    private static byte[] RealisticPage(Random r)
    {
        // Pointer-rich and text-like content, as a heap page holds.
        var p = new byte[4096];
        for (int i = 0; i < p.Length; i += 8)
        {
            ulong w = (i / 8 % 3) switch
            {
                0 => 0x0000_7f3a_1200_0000UL + (ulong)r.Next(0, 1 << 20) * 16,
                1 => (ulong)r.Next(0, 100),
                _ => (ulong)r.NextInt64(),
            };
            BitConverter.TryWriteBytes(p.AsSpan(i), w);
        }
        return p;
    }

    private static byte[] Mutate(byte[] old, Random r, int edits)
    {
        var p = (byte[])old.Clone();
        for (int e = 0; e < edits; e++)
        {
            int at = r.Next(0, p.Length);
            int len = Math.Min(p.Length - at, r.Next(1, 40));
            for (int i = 0; i < len; i++)
                p[at + i] = (byte)r.Next(256);
        }
        return p;
    }

    [Fact]
    public void Encode_OneChangedRun_IsQemusGrammar()
    {
        var old = new byte[4096];
        var cur = new byte[4096];
        cur[5] = 1; cur[6] = 2; cur[7] = 3;
        var dst = new byte[64];
        int n = PageDelta.Encode(old, cur, dst);
        // zrun 5, nzrun 3, the new bytes; the trailing zero run is not written.
        Assert.Equal(new byte[] { 5, 3, 1, 2, 3 }, dst[..n]);
        cur[300] = 9; // a zero run of 292 needs two ULEB128 bytes
        n = PageDelta.Encode(old, cur, dst);
        Assert.Equal(new byte[] { 5, 3, 1, 2, 3, 0xa4, 0x02, 1, 9 }, dst[..n]);
        var back = new byte[4096];
        Assert.Null(PageDelta.TryApply(dst.AsSpan(0, n), back));
        Assert.Equal(cur, back);
    }

    [Fact]
    public void Encode_UnchangedPage_IsEmpty_AndOverflowIsMinusOne()
    {
        var r = new Random(7);
        var p = RealisticPage(r);
        Assert.Equal(0, PageDelta.Encode(p, p, new byte[16]));
        var q = RealisticPage(r);
        Assert.Equal(-1, PageDelta.Encode(p, q, new byte[100]));
    }

    [Fact]
    public void EncodeThenApply_RebuildsEveryPage()
    {
        var r = new Random(12345);
        var dst = new byte[8192];
        for (int c = 0; c < 2000; c++)
        {
            var old = c % 5 == 0 ? new byte[4096] : RealisticPage(r);
            var cur = Mutate(old, r, r.Next(0, 60));
            if (c % 17 == 0) cur[^1] ^= 0x55;        // a change in the last byte
            if (c % 23 == 0) cur[0] ^= 0x01;         // and in the first
            int n = PageDelta.Encode(old, cur, dst);
            Assert.InRange(n, 0, 4096 + 16);
            var page = (byte[])old.Clone();
            Assert.Null(PageDelta.TryApply(dst.AsSpan(0, n), page));
            Assert.Equal(cur, page);
        }
    }

    [Theory]
    [InlineData(new byte[] { 3, 0 }, "zero-length literal")]
    [InlineData(new byte[] { 2, 1, 7, 0, 1, 7 }, "zero-length zero run")]
    [InlineData(new byte[] { 0xff, 0x7f, 1, 1 }, "runs past the page")]
    [InlineData(new byte[] { 3, 5, 1, 2 }, "runs past the page or the delta")]
    [InlineData(new byte[] { 3 }, "without a literal run")]
    [InlineData(new byte[] { 3, 0x80 }, "truncated")]
    public void Apply_RejectsMalformedDeltas(byte[] delta, string problem)
    {
        var page = new byte[4096];
        var msg = PageDelta.TryApply(delta, page);
        Assert.NotNull(msg);
        Assert.Contains(problem, msg);
    }

    private (string Parent, string Child, byte[][] Expected) BuildChain(PageStoreOptions options, bool linkParent = true, bool parentHasPages = true)
    {
        var r = new Random(3);
        var v1 = Enumerable.Range(0, 4).Select(_ => RealisticPage(r)).ToArray();
        var v2 = v1.Select(p => Mutate(p, r, 3)).ToArray();
        var parent = _tmp.Sub("p");
        using (var d = ImageDirectory.Create(parent))
        {
            using var w = d.BeginPagemap(TestImages.Pid, options);
            if (parentHasPages)
                w.AddPresent(Base, v1.SelectMany(x => x).ToArray());
            else
                w.AddPresent(Base + 0x100000, v1[0]);
            w.Finish();
            d.Commit();
        }
        var child = _tmp.Sub("c");
        using (var d = ImageDirectory.Create(child))
        {
            if (linkParent)
                d.LinkParent("../p");
            using var w = d.BeginPagemap(TestImages.Pid, options);
            w.AddParentHole(Base, 1);
            var delta = new byte[4096];
            for (int i = 1; i <= 2; i++)
            {
                int n = PageDelta.Encode(v1[i], v2[i], delta);
                Assert.True(n > 0);
                w.AddDelta(Base + (ulong)i * 4096, delta.AsSpan(0, n), PageDelta.Checksum(v2[i]));
            }
            w.AddPresent(Base + 3 * 4096, v2[3]);
            var st = w.Finish();
            Assert.Equal(2UL, st.PagesDelta);
            d.Commit();
        }
        return (parent, child, [v1[0], v2[1], v2[2], v2[3]]);
    }

    public static TheoryData<string> Stores() => ["lz4", "raw"];

    private static PageStoreOptions Store(string s) => s == "lz4" ? PageStoreOptions.Lz4() : PageStoreOptions.Raw;

    [Theory]
    [MemberData(nameof(Stores))]
    public void DeltaChain_ReadsTheNewContents_AndAdjacentDeltasShareAnEntry(string store)
    {
        var (_, child, expected) = BuildChain(Store(store));
        var set = ImageSet.Open(child);
        using var reader = set.OpenPageReader(TestImages.Pid);
        var entries = reader.Pagemap.Entries;
        Assert.Equal(3, entries.Count);
        Assert.Equal(PagemapFlags.Delta, PagemapImage.FlagsOf(entries[1]));
        Assert.Equal(2UL, PagemapImage.NrPages(entries[1]));
        Assert.Equal((uint)DeltaEncoding.Xbzrle, reader.Pagemap.Head.DeltaEncoding);
        Assert.True(File.Exists(Path.Combine(child, "deltas-1.img")));
        var all = new byte[4 * 4096];
        reader.Read(Base, all);
        Assert.Equal(expected.SelectMany(x => x).ToArray(), all);
        Assert.Equal(2UL, reader.Stats.DeltasApplied);
    }

    [Fact]
    public void DeltaWithoutParent_IsAMissingBaseNamingTheRange()
    {
        var (_, child, _) = BuildChain(PageStoreOptions.Lz4(), linkParent: false);
        using var reader = ImageSet.Open(child).OpenPageReader(TestImages.Pid);
        var e = Assert.Throws<MissingPagesException>(() => reader.Read(Base + 4096, new byte[4096]));
        Assert.Contains("0x7f0000001000-0x7f0000002000", e.Message);
        Assert.Contains("delta base", e.Message);
    }

    [Fact]
    public void DeltaWhoseBaseIsNotInTheParent_IsAMissingBaseNamingTheRange()
    {
        var (_, child, _) = BuildChain(PageStoreOptions.Lz4(), parentHasPages: false);
        using var reader = ImageSet.Open(child).OpenPageReader(TestImages.Pid);
        var e = Assert.Throws<MissingPagesException>(() => reader.Read(Base + 2 * 4096, new byte[4096]));
        Assert.Contains("0x7f0000002000-0x7f0000003000", e.Message);
        Assert.Contains("base of a PE_DELTA page", e.Message);
    }

    [Fact]
    public void WrongBase_FailsTheChecksum_NamingTheRange()
    {
        var (parent, child, _) = BuildChain(PageStoreOptions.Raw);
        // Another version of page 1 in the parent: the delta applies, the result is wrong.
        var pages = Path.Combine(parent, "pages-1.img");
        var bytes = File.ReadAllBytes(pages);
        bytes[4096 + 100] ^= 0xff;
        File.WriteAllBytes(pages, bytes);
        using var reader = ImageSet.Open(child).OpenPageReader(TestImages.Pid);
        var e = Assert.Throws<ImageFormatException>(() => reader.Read(Base + 4096, new byte[4096]));
        Assert.Contains("checksum mismatch for the delta page 0x7f0000001000-0x7f0000002000", e.Message);
    }

    [Fact]
    public void TruncatedDeltasFile_IsRefusedWhenOpened()
    {
        var (_, child, _) = BuildChain(PageStoreOptions.Lz4());
        var f = Path.Combine(child, "deltas-1.img");
        File.WriteAllBytes(f, File.ReadAllBytes(f)[..^1]);
        var e = Assert.Throws<ImageFormatException>(() => ImageSet.Open(child).OpenPageReader(TestImages.Pid));
        Assert.Contains("deltas", e.Message);
        File.Delete(f);
        Assert.Throws<ImageFormatException>(() => ImageSet.Open(child).OpenPageReader(TestImages.Pid));
    }

    /// <summary>
    /// 96 pages rewritten with pointer-like words (a heap's kind of change): their deltas
    /// together exceed one 64 KiB block, so deltas straddle block edges.
    /// </summary>
    private (string Child, byte[][] Expected, PageWriteStats Stats) BuildWideDeltaChain(PageStoreOptions options)
    {
        const int n = 96;
        var r = new Random(5);
        var v1 = Enumerable.Range(0, n).Select(_ => RealisticPage(r)).ToArray();
        var v2 = v1.Select(p =>
        {
            var q = (byte[])p.Clone();
            for (int i = 0; i < q.Length; i += 24)
                BitConverter.TryWriteBytes(q.AsSpan(i), 0x0000_7f3a_1200_0000UL + (ulong)r.Next(0, 64) * 16);
            return q;
        }).ToArray();
        var parent = _tmp.Sub("wp");
        using (var d = ImageDirectory.Create(parent))
        {
            using var w = d.BeginPagemap(TestImages.Pid, options);
            w.AddPresent(Base, v1.SelectMany(x => x).ToArray());
            w.Finish();
            d.Commit();
        }
        var child = _tmp.Sub("wc");
        PageWriteStats st;
        using (var d = ImageDirectory.Create(child))
        {
            d.LinkParent("../wp");
            using var w = d.BeginPagemap(TestImages.Pid, options);
            var delta = new byte[4096];
            for (int i = 0; i < n; i++)
            {
                int len = PageDelta.Encode(v1[i], v2[i], delta);
                Assert.True(len > 0);
                w.AddDelta(Base + (ulong)i * 4096, delta.AsSpan(0, len), PageDelta.Checksum(v2[i]));
            }
            st = w.Finish();
            d.Commit();
        }
        return (child, v2, st);
    }

    [Fact]
    public void CompressedImage_StoresDeltasInCompressedBlocks_AndReadsEveryPageBack()
    {
        var (child, expected, st) = BuildWideDeltaChain(PageStoreOptions.Lz4());
        Assert.True(st.BytesDelta > 64 << 10, $"{st.BytesDelta} encoded delta bytes: the test needs more than one block");
        long file = new FileInfo(Path.Combine(child, "deltas-1.img")).Length;
        Assert.Equal((long)st.BytesDeltaStored, file);
        // The deltas' literal bytes are the pages' data, which compresses: the file is smaller.
        Assert.True(file < (long)st.BytesDelta * 3 / 4, $"deltas-1.img holds {file} bytes for {st.BytesDelta} encoded");
        using var reader = ImageSet.Open(child).OpenPageReader(TestImages.Pid);
        Assert.Equal(2, reader.Pagemap.Head.DeltaBlockSizes.Count);
        Assert.Equal(file, reader.Pagemap.Head.DeltaBlockSizes.Sum(x => (long)x));
        var all = new byte[expected.Length * 4096];
        reader.Read(Base, all);
        Assert.Equal(expected.SelectMany(x => x).ToArray(), all);
        // Page by page from the end (no block kept from a previous read helps).
        for (int i = expected.Length - 1; i >= 0; i -= 7)
        {
            var one = new byte[4096];
            reader.ReadPage(Base + (ulong)i * 4096, one);
            Assert.Equal(expected[i], one);
        }
    }

    [Fact]
    public void RawImage_StoresDeltasAsEncoded()
    {
        var (child, _, st) = BuildWideDeltaChain(PageStoreOptions.Raw);
        Assert.Equal(st.BytesDelta, st.BytesDeltaStored);
        Assert.Equal((long)st.BytesDelta, new FileInfo(Path.Combine(child, "deltas-1.img")).Length);
        using var reader = ImageSet.Open(child).OpenPageReader(TestImages.Pid);
        Assert.Empty(reader.Pagemap.Head.DeltaBlockSizes);
    }

    [Fact]
    public void DamagedDeltaBlock_IsAnErrorNamingTheDeltasFile()
    {
        var (child, _, _) = BuildWideDeltaChain(PageStoreOptions.Lz4());
        var f = Path.Combine(child, "deltas-1.img");
        var bytes = File.ReadAllBytes(f);
        for (int i = 0; i < 64; i++)
            bytes[i] ^= 0x5a;
        File.WriteAllBytes(f, bytes);
        var e = Assert.Throws<ImageFormatException>(() => ImageSet.Open(child));
        Assert.Contains("deltas-1.img", e.Message);
        // Without the manifest's check, reading the block finds the damage itself.
        File.Delete(Path.Combine(child, Manifest.FileName));
        using var reader = ImageSet.Open(child).OpenPageReader(TestImages.Pid);
        e = Assert.Throws<ImageFormatException>(() => reader.Read(Base, new byte[4096]));
        Assert.Contains("deltas-1.img", e.Message);
    }

    [Fact]
    public void Crit_DecodesTheDeltaChainsPagemaps()
    {
        var (parent, child, _) = BuildChain(PageStoreOptions.Lz4());
        foreach (var dir in new[] { parent, child })
        {
            var psi = new ProcessStartInfo("crit", ["decode", "-i", Path.Combine(dir, "pagemap-100.img"), "--pretty"])
            { RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start crit");
            string o = p.StandardOutput.ReadToEnd(), err = p.StandardError.ReadToEnd();
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, $"crit decode {dir}: {err}");
            Assert.Contains("PAGEMAP", o);
            if (dir == child)
                Assert.Contains("0x10000", o); // PE_DELTA, a bit crit does not name
        }
    }
}

namespace CriuSharp.ImageFormat.Tests;

public sealed class ParentChainTests : IDisposable
{
    private readonly TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private const ulong Base = 0x7f00_0000_0000;

    private static byte[] Page(byte fill)
    {
        var p = new byte[4096];
        p.AsSpan().Fill(fill);
        p[0] = 0;
        return p;
    }

    /// <summary>pre1 holds pages 0..7 (fill 1), pre2 rewrites 2..3 (fill 2), dump rewrites 5 (fill 3).</summary>
    private string BuildChain(PageStoreOptions options)
    {
        var pre1 = _tmp.Sub("pre1");
        using (var d = ImageDirectory.Create(pre1))
        {
            using var w = d.BeginPagemap(TestImages.Pid, options);
            var data = new byte[8 * 4096];
            for (int i = 0; i < 8; i++) Page(1).CopyTo(data, i * 4096);
            w.AddPresent(Base, data);
            w.Finish();
            d.Commit();
        }
        var pre2 = _tmp.Sub("pre2");
        using (var d = ImageDirectory.Create(pre2))
        {
            d.LinkParent("../pre1");
            using var w = d.BeginPagemap(TestImages.Pid, options);
            w.AddParentHole(Base, 2);
            w.AddPresent(Base + 2 * 4096, [.. Page(2), .. Page(2)]);
            w.AddParentHole(Base + 4 * 4096, 4);
            w.Finish();
            d.Commit();
        }
        var dump = _tmp.Sub("dump");
        using (var d = ImageDirectory.Create(dump))
        {
            d.LinkParent(pre2); // absolute on purpose: stored relative
            using var w = d.BeginPagemap(TestImages.Pid, options);
            w.AddParentHole(Base, 5);
            w.AddPresent(Base + 5 * 4096, Page(3));
            w.AddParentHole(Base + 6 * 4096, 2);
            w.Finish();
            d.Commit();
        }
        return dump;
    }

    [Theory]
    [InlineData(PageCompression.None)]
    [InlineData(PageCompression.Lz4)]
    [InlineData(PageCompression.Zstd)]
    public void PageReader_ResolvesPagesThroughTheChain(PageCompression c)
    {
        var dump = BuildChain(new PageStoreOptions { Compression = c, BlockPages = 2 });
        var set = ImageSet.Open(dump);
        Assert.Equal("../pre2", new FileInfo(Path.Combine(dump, "parent")).LinkTarget);
        Assert.Equal(3, set.Chain().Count);
        using var r = set.OpenPageReader(TestImages.Pid);
        var buf = new byte[8 * 4096];
        r.Read(Base, buf);
        byte[] expected = [1, 1, 2, 2, 1, 3, 1, 1];
        for (int i = 0; i < 8; i++)
            Assert.Equal(Page(expected[i]), buf.AsSpan(i * 4096, 4096).ToArray());
        Assert.Equal(7ul, r.Stats.PagesFromParent);
    }

    [Fact]
    public void HoleMissingInParent_NamesTheRange()
    {
        var dump = BuildChain(PageStoreOptions.Raw);
        using (var d = ImageDirectory.Create(_tmp.Sub("next")))
        {
            d.LinkParent("../dump");
            using var w = d.BeginPagemap(TestImages.Pid, PageStoreOptions.Raw);
            w.AddParentHole(Base + 8 * 4096, 1);
            w.Finish();
            d.Commit();
        }
        using var r = ImageSet.Open(_tmp.Sub("next")).OpenPageReader(TestImages.Pid);
        var ex = Assert.Throws<MissingPagesException>(() => r.ReadPage(Base + 8 * 4096, new byte[4096]));
        Assert.Equal(Base + 8 * 4096, ex.Start);
        Assert.Contains($"0x{Base + 8 * 4096:x}-0x{Base + 9 * 4096:x}", ex.Message);
        Assert.Contains("PE_PARENT", ex.Message);
    }

    [Fact]
    public void AddressInNoEntry_IsMissing()
    {
        var dump = BuildChain(PageStoreOptions.Raw);
        using var r = ImageSet.Open(dump).OpenPageReader(TestImages.Pid);
        var ex = Assert.Throws<MissingPagesException>(() => r.ReadPage(0x1000, new byte[4096]));
        Assert.Contains("0x1000-0x2000", ex.Message);
    }

    [Fact]
    public void ParentLinkLoop_IsDetected()
    {
        var a = _tmp.Sub("a");
        var b = _tmp.Sub("b");
        foreach (var dir in new[] { a, b })
            using (var d = ImageDirectory.Create(dir))
                d.Commit();
        File.CreateSymbolicLink(Path.Combine(a, "parent"), "../b");
        File.CreateSymbolicLink(Path.Combine(b, "parent"), "../a");
        var ex = Assert.Throws<ImageFormatException>(() => ImageSet.Open(a).Chain());
        Assert.Equal("parent link", ex.Kind);
        Assert.Contains("loops", ex.Message);
        Assert.Contains(Path.Combine(b, "parent"), ex.Message);
    }

    [Fact]
    public void SelfReferencingSymlink_IsALoop()
    {
        var a = _tmp.Sub("self");
        using (var d = ImageDirectory.Create(a))
            d.Commit();
        File.CreateSymbolicLink(Path.Combine(a, "parent"), "parent");
        var ex = Assert.Throws<ImageFormatException>(() => ImageSet.Open(a).Parent);
        Assert.Contains("loop", ex.Message);
    }

    [Fact]
    public void DanglingParentLink_IsDetected()
    {
        var a = _tmp.Sub("dangling");
        using (var d = ImageDirectory.Create(a))
            d.Commit();
        File.CreateSymbolicLink(Path.Combine(a, "parent"), "../gone");
        var ex = Assert.Throws<ImageFormatException>(() => ImageSet.Open(a).Parent);
        Assert.Contains("dangling", ex.Message);
        Assert.Contains("../gone", ex.Message);
        Assert.Contains(Path.Combine(a, "parent"), ex.Message);
    }

    [Fact]
    public void IncompleteParent_IsRefused()
    {
        var p = _tmp.Sub("p");
        ImageDirectory.Create(p).Dispose();
        var c = _tmp.Sub("c");
        using (var d = ImageDirectory.Create(c))
        {
            d.LinkParent("../p");
            d.Commit();
        }
        var ex = Assert.Throws<ImageFormatException>(() => ImageSet.Open(c).Parent);
        Assert.Contains("incomplete", ex.Message);
    }
}

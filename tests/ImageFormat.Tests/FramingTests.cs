using CriuSharp.ImageFormat.Images;
using Google.Protobuf;

namespace CriuSharp.ImageFormat.Tests;

public class FramingTests
{
    private static string Hex(byte[] bytes, int count) =>
        string.Join(' ', bytes.Take(count).Select(b => b.ToString("x2")));

    // First 16 bytes of images made by crit encode, as Debian's crit 3.17.1 writes them.
    [Fact]
    public void Inventory_HasNoHeadMagic_AndMatchesCritBytes()
    {
        var bytes = ImageFile.Serialize(ImageKind.Inventory, [TestImages.Inventory()]);
        Assert.Equal("16 31 31 58 12 00 00 00 08 02 10 01 1a 08 08 01", Hex(bytes, 16));
    }

    [Fact]
    public void Pstree_MatchesCritBytes()
    {
        var bytes = ImageFile.Serialize(ImageKind.Pstree, [TestImages.Pstree()]);
        Assert.Equal("19 43 56 54 30 30 27 50 0a 00 00 00 08 64 10 00", Hex(bytes, 16));
    }

    [Fact]
    public void Core_StartsLikeCrit()
    {
        var bytes = ImageFile.Serialize(ImageKind.Core, [TestImages.Core()]);
        Assert.Equal("19 43 56 54 47 38 05 55", Hex(bytes, 8));
        Assert.Equal("08 01 12", Hex(bytes.Skip(12).ToArray(), 3));
    }

    [Fact]
    public void Mm_StartsLikeCrit()
    {
        var bytes = ImageFile.Serialize(ImageKind.Mm, [TestImages.Mm()]);
        Assert.Equal("19 43 56 54 20 28 49 57", Hex(bytes, 8));
        Assert.Equal("08 80 80 80", Hex(bytes.Skip(12).ToArray(), 4));
    }

    [Fact]
    public void Pagemap_WithoutField5_MatchesCritBytes()
    {
        using var ms = new MemoryStream();
        var w = new PagemapWriter(Stream.Null, 1, PageStoreOptions.Raw with { WriteNrPages64 = false });
        w.AddPresent(0x400000, new byte[4096]);
        w.Finish();
        ImageFile.Write(ms, ImageKind.Pagemap, w.PagemapMessages());
        Assert.Equal("19 43 56 54 25 40 08 56 02 00 00 00 08 01 09 00", Hex(ms.ToArray(), 16));
    }

    [Fact]
    public void Pagemap_ByDefault_AlsoWritesField5()
    {
        var w = new PagemapWriter(Stream.Null, 1, PageStoreOptions.Raw);
        w.AddPresent(0x400000, new byte[2 * 4096]);
        var e = (pagemap_entry)w.PagemapMessages().Last();
        Assert.Equal(2u, e.NrPages);
        Assert.True(e.HasNrPages64);
        Assert.Equal(2ul, e.NrPages64);
    }

    [Fact]
    public void StatsDump_UsesServiceHead_AndMatchesCritBytes()
    {
        var stats = new dump_stats_entry { FreezingTime = 10, FrozenTime = 20, MemdumpTime = 30, MemwriteTime = 40, PagesScanned = 50, PagesSkippedParent = 60, PagesWritten = 70, PagesLazy = 80, IrmapResolve = 0, PagePipes = 1, PagePipeBufs = 1 };
        var bytes = ImageFile.Serialize(ImageKind.Stats, [new stats_entry { Dump = stats }]);
        Assert.Equal("40 59 10 55 06 33 09 57", Hex(bytes, 8));
        Assert.Equal("0a", Hex(bytes.Skip(12).ToArray(), 1));
        Assert.Equal("08 0a", Hex(bytes.Skip(14).ToArray(), 2));
    }

    [Fact]
    public void Files_MatchesCritBytes()
    {
        var bytes = ImageFile.Serialize(ImageKind.Files, [TestImages.ExeFile()]);
        Assert.Equal("19 43 56 54 38 31 30 56", Hex(bytes, 8));
        Assert.Equal("08 01 10 01", Hex(bytes.Skip(12).ToArray(), 4));
    }

    [Fact]
    public void RequiredFields_AreWrittenEvenWhenZero()
    {
        var bytes = ImageFile.Serialize(ImageKind.Pstree, [new pstree_entry { Pid = 5 }]);
        // pid=5, ppid=0, pgid=0, sid=0: four fields, eight bytes, after the 8 magic bytes and the size.
        Assert.Equal("08 00 00 00 08 05 10 00 18 00 20 00", Hex(bytes.Skip(8).ToArray(), 12));
    }

    [Fact]
    public void SizePrefix_IsFixedLittleEndian()
    {
        var core = TestImages.Core(new string('x', 300));
        var bytes = ImageFile.Serialize(ImageKind.Core, [core]);
        uint size = BitConverter.ToUInt32(bytes, 8);
        Assert.Equal((uint)(bytes.Length - 12), size);
        Assert.True(size > 300);
    }
}

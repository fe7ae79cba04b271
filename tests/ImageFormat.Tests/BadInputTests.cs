using System.Buffers.Binary;
using CriuSharp.ImageFormat.Images;

namespace CriuSharp.ImageFormat.Tests;

public sealed class BadInputTests : IDisposable
{
    private readonly TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private string WriteFile(string name, byte[] bytes)
    {
        var p = _tmp.Sub(name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    private static void AssertNames(ImageFormatException ex, string file, string kind, long? offset)
    {
        Assert.Equal(file, ex.FilePath);
        Assert.Equal(kind, ex.Kind);
        Assert.Equal(offset, ex.Offset);
        Assert.Contains(file, ex.Message);
        Assert.Contains(kind, ex.Message);
        if (offset is long o)
            Assert.Contains($"offset {o}", ex.Message);
    }

    [Fact]
    public void WrongTypeMagic_NamesFileKindOffset()
    {
        var bytes = ImageFile.Serialize(ImageKind.Core, [TestImages.Core()]);
        var p = WriteFile("mm-1.img", bytes);
        var ex = Assert.Throws<ImageFormatException>(() => ImageFile.Read(p, ImageKind.Mm));
        AssertNames(ex, p, "MM", 4);
        Assert.Contains("CORE", ex.Message);
    }

    [Fact]
    public void WrongHeadMagic_IsRejected()
    {
        var bytes = ImageFile.Serialize(ImageKind.Stats, [new stats_entry { Dump = TestImages.DumpStats() }]);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, Magic.ImgCommon);
        var p = WriteFile("stats-dump", bytes);
        AssertNames(Assert.Throws<ImageFormatException>(() => ImageFile.Read(p, ImageKind.Stats)), p, "STATS", 0);
        AssertNames(Assert.Throws<ImageFormatException>(() => ImageFile.Read(p)), p, "STATS", 0);
    }

    [Fact]
    public void UnknownMagic_WithoutExpectedKind()
    {
        var p = WriteFile("pages-1.img", new byte[4096]);
        AssertNames(Assert.Throws<ImageFormatException>(() => ImageFile.Read(p)), p, "unknown", 0);
    }

    [Fact]
    public void TruncatedSizePrefix_NamesItsOffset()
    {
        var bytes = ImageFile.Serialize(ImageKind.Pstree, [TestImages.Pstree()]);
        var p = WriteFile("pstree.img", [.. bytes, 1, 2]);
        AssertNames(Assert.Throws<ImageFormatException>(() => ImageFile.Read(p, ImageKind.Pstree)), p, "PSTREE", bytes.Length);
    }

    [Fact]
    public void SizePrefixPastEndOfFile_NamesItsOffset()
    {
        var bytes = ImageFile.Serialize(ImageKind.Pstree, [TestImages.Pstree(), TestImages.Pstree(101, 100)]);
        var p = WriteFile("pstree.img", bytes[..^3]);
        int second = 8 + 4 + (int)BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(8));
        var ex = Assert.Throws<ImageFormatException>(() => ImageFile.Read(p, ImageKind.Pstree));
        AssertNames(ex, p, "PSTREE", second);
        Assert.Contains("past the end", ex.Message);
    }

    [Fact]
    public void HugeSizePrefix_IsRefusedBeforeAllocating()
    {
        var bytes = new byte[12];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, Magic.ImgCommon);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), Magic.Core);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(8), 0xFFFF_FFF0);
        var p = WriteFile("core-1.img", bytes);
        var ex = Assert.Throws<ImageFormatException>(() => ImageFile.Read(p, ImageKind.Core));
        AssertNames(ex, p, "CORE", 8);
        Assert.Contains("limit", ex.Message);
    }

    [Fact]
    public void GarbageEntry_IsATypedError()
    {
        var bytes = new byte[] { 0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50, 3, 0, 0, 0, 0xff, 0xff, 0xff };
        var p = WriteFile("pstree.img", bytes);
        AssertNames(Assert.Throws<ImageFormatException>(() => ImageFile.Read(p, ImageKind.Pstree)), p, "PSTREE", 8);
    }

    private (string Dir, PagemapImage Map) WritePagemap(PageStoreOptions options, byte[] data)
    {
        var dir = _tmp.Sub("img");
        using var d = ImageDirectory.Create(dir);
        using (var w = d.BeginPagemap(1, options))
        {
            w.AddPresent(0x10000, data);
            w.Finish();
        }
        d.Commit();
        return (dir, PagemapImage.Load(Path.Combine(dir, "pagemap-1.img")));
    }

    [Fact]
    public void ChecksumMismatch_NamesPagesFileAndBlockOffset()
    {
        var data = TestImages.MixedPages(32, 5);
        data.AsSpan(0, 4096).Fill(7);
        var (dir, map) = WritePagemap(PageStoreOptions.Lz4(blockPages: 8), data);
        var pagesPath = Path.Combine(dir, "pages-1.img");
        var pages = File.ReadAllBytes(pagesPath);
        int b0 = (int)map.Entries[0].BlockSizes[0];
        pages[b0 + 1] ^= 0x55; // inside block 1
        File.WriteAllBytes(pagesPath, pages);
        using var r = ImageSet.Open(dir).OpenPageReader(1);
        var buf = new byte[4096];
        r.ReadPage(0x10000, buf); // block 0 still fine
        var ex = Assert.Throws<ImageFormatException>(() => r.ReadPage(0x10000 + 8 * 4096, buf));
        AssertNames(ex, pagesPath, "pages", b0);
        Assert.Contains("checksum", ex.Message);
    }

    [Fact]
    public void UnknownCompression_IsRejectedAtLoad()
    {
        var (dir, map) = WritePagemap(PageStoreOptions.Lz4(), TestImages.MixedPages(4, 1));
        map.Head.Compression = 9;
        var p = Path.Combine(dir, "pagemap-1.img");
        ImageFile.WriteAtomic(p, ImageKind.Pagemap, [map.Head, .. map.Entries]);
        var ex = Assert.Throws<ImageFormatException>(() => PagemapImage.Load(p));
        AssertNames(ex, p, "PAGEMAP", 8);
        Assert.Contains("unknown compression 9", ex.Message);
    }

    [Fact]
    public void PagesFileShorterThanPagemapSays_IsRejected()
    {
        var (dir, _) = WritePagemap(PageStoreOptions.Raw, new byte[3 * 4096]);
        var pagesPath = Path.Combine(dir, "pages-1.img");
        File.WriteAllBytes(pagesPath, new byte[4096]);
        var ex = Assert.Throws<ImageFormatException>(() => ImageSet.Open(dir).OpenPageReader(1));
        AssertNames(ex, pagesPath, "pages", 4096);
    }

    [Fact]
    public void BlockSizeLargerThanPossible_IsRejectedAtLoad()
    {
        var (dir, map) = WritePagemap(PageStoreOptions.Lz4(blockPages: 2), TestImages.MixedPages(4, 2));
        map.Entries[0].BlockSizes[0] = 1 << 30;
        map.Entries[0].ClearZeroPages();
        var p = Path.Combine(dir, "pagemap-1.img");
        ImageFile.WriteAtomic(p, ImageKind.Pagemap, [map.Head, .. map.Entries]);
        var ex = Assert.Throws<ImageFormatException>(() => PagemapImage.Load(p));
        AssertNames(ex, p, "PAGEMAP", map.EntryFileOffsets[1]);
    }

    [Fact]
    public void IncompleteDirectory_IsRefused()
    {
        var dir = _tmp.Sub("partial");
        var d = ImageDirectory.Create(dir);
        d.WritePstree([TestImages.Pstree()]);
        d.Dispose(); // never committed, as after a crash
        var ex = Assert.Throws<ImageFormatException>(() => ImageSet.Open(dir));
        Assert.Contains("incomplete", ex.Message);
        Assert.Contains(dir, ex.Message);
    }

    [Fact]
    public void AbandonedPagemap_LeavesNoPagesFile()
    {
        var dir = _tmp.Sub("abandoned");
        var d = ImageDirectory.Create(dir);
        using (var w = d.BeginPagemap(1, PageStoreOptions.Raw))
            w.AddPresent(0x1000, new byte[4096]);
        Assert.False(File.Exists(Path.Combine(dir, "pages-1.img")));
        Assert.False(File.Exists(Path.Combine(dir, "pagemap-1.img")));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));
    }
}

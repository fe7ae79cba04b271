using CriuSharp.ImageFormat;

namespace CriuSharp.ImageFormat.Tests;

/// <summary>The engine choice is process-wide, so these tests run alone.</summary>
[CollectionDefinition(nameof(Lz4EngineGroup), DisableParallelization = true)]
public sealed class Lz4EngineGroup;

/// <summary>
/// liblz4 and K4os.Compression.LZ4 write the same LZ4 block format: each decodes the other's
/// blocks, and at acceleration 1 they produce the same bytes, so an image is the same whichever
/// engine wrote it.
/// </summary>
[Collection(nameof(Lz4EngineGroup))]
public class Lz4EngineTests
{
    private static T With<T>(Lz4Engine engine, Func<T> body)
    {
        var before = Lz4Engines.Preferred;
        Lz4Engines.Preferred = engine;
        try
        {
            return body();
        }
        finally
        {
            Lz4Engines.Preferred = before;
        }
    }

    private static byte[] Compress(Lz4Engine engine, ReadOnlySpan<byte> src)
    {
        var copy = src.ToArray();
        return With(engine, () =>
        {
            using var codec = new BlockCodec(PageCompression.Lz4, 1);
            var dst = new byte[BlockCodec.MaxCompressedSize(PageCompression.Lz4, copy.Length)];
            int n = codec.Compress(copy, dst);
            return dst.AsSpan(0, n).ToArray();
        });
    }

    private static string? Decompress(Lz4Engine engine, byte[] src, byte[] dst) => With(engine, () =>
    {
        using var codec = new BlockCodec(PageCompression.Lz4, 0);
        return codec.TryDecompress(src, dst);
    });

    public static TheoryData<int, int> Blocks => new() { { 1, 1 }, { 16, 2 }, { 64, 3 }, { 16, 4 } };

    [Theory, MemberData(nameof(Blocks))]
    public void EachEngine_DecodesTheOthersBlocks_AndBothWriteTheSameBytes(int pages, int seed)
    {
        Assert.True(Lz4Engines.NativeAvailable, "liblz4.so.1 must load on the test machine");
        var data = TestImages.MixedPages(pages, seed);
        var native = Compress(Lz4Engine.Native, data);
        var managed = Compress(Lz4Engine.Managed, data);
        Assert.Equal(native, managed);

        var back = new byte[data.Length];
        Assert.Null(Decompress(Lz4Engine.Managed, native, back));
        Assert.Equal(data, back);
        Array.Clear(back);
        Assert.Null(Decompress(Lz4Engine.Native, managed, back));
        Assert.Equal(data, back);
    }

    [Fact]
    public void ManagedDecoder_RejectsADamagedBlock_WithAReason()
    {
        var data = TestImages.MixedPages(16, 5);
        var block = Compress(Lz4Engine.Managed, data);
        var cut = block.AsSpan(0, block.Length / 2).ToArray();
        Assert.NotNull(Decompress(Lz4Engine.Managed, cut, new byte[data.Length]));
    }

    [Fact]
    public void PagesFileAndPagemap_AreByteIdentical_WhicheverEngineWroteThem()
    {
        var data = TestImages.MixedPages(700, 11);
        (byte[], string) Write(Lz4Engine engine) => With(engine, () =>
        {
            var ms = new MemoryStream();
            using var w = new PagemapWriter(ms, 1, PageStoreOptions.Lz4(blockPages: 16) with { Parallelism = 2 }, leaveOpen: true);
            w.AddPresent(0x7f00_0000_0000, data);
            w.Finish();
            return (ms.ToArray(), string.Join(";", w.Entries.Select(e => e.ToString())));
        });
        var (nativeFile, nativeEntries) = Write(Lz4Engine.Native);
        var (managedFile, managedEntries) = Write(Lz4Engine.Managed);
        Assert.Equal(nativeFile, managedFile);
        Assert.Equal(nativeEntries, managedEntries);
    }

    [Fact]
    public void ManagedEngine_RefusesAnAccelerationItCannotHonour()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => With(Lz4Engine.Managed, () => new BlockCodec(PageCompression.Lz4, 4)));
    }

    [Fact]
    public void Auto_PicksNativeWhenItLoads()
    {
        Assert.Equal(Lz4Engine.Native, With(Lz4Engine.Auto, () => Lz4Engines.Effective));
        Assert.Equal(Lz4Engine.Managed, With(Lz4Engine.Managed, () => Lz4Engines.Effective));
        Assert.Throws<ArgumentException>(() => Lz4Engines.Parse("fast"));
    }
}

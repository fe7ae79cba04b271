using System.IO.Hashing;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using CriuSharp.ImageFormat;

namespace CriuSharp.Bench;

/// <summary>
/// The native libraries against the managed packages that can replace them, on the same bytes in
/// one run (each category's Baseline is the native library, so the Ratio column is managed/native):
///   Lz4Compress:   liblz4 LZ4_compress_default vs K4os LZ4Codec.Encode (L00_FAST), 64 KiB blocks.
///   Lz4Decompress: liblz4 LZ4_decompress_safe vs K4os LZ4Codec.Decode, the same blocks.
///   Xxh3:          libxxhash XXH3_64bits (dispatched) vs System.IO.Hashing XxHash3, 4 KiB pages.
/// The input is 8 MiB of the machine's shared libraries (as `lz4 -b1` was measured for the cost
/// model), falling back to the synthetic process image when /usr/lib has too little.
/// </summary>
[Config(typeof(ImageFormatBenchmarks.InProcessShortConfig))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public unsafe class LibraryBenchmarks
{
    private const int Block = 64 * 1024;
    private const int Bytes = 8 << 20;
    private byte[] _data = [];
    private byte[] _compressed = [];
    private int[] _sizes = [];
    private byte[] _out = [];

    [GlobalSetup]
    public void Setup()
    {
        _data = SharedLibraryBytes(Bytes) ?? ImageFormatBenchmarks.BuildSample(Bytes / PageGeometry.PageSize, 7);
        int blocks = _data.Length / Block;
        int bound = K4os.Compression.LZ4.LZ4Codec.MaximumOutputSize(Block);
        _compressed = new byte[blocks * bound];
        _sizes = new int[blocks];
        _out = new byte[Block];
        fixed (byte* s = _data)
        fixed (byte* d = _compressed)
        {
            for (int b = 0; b < blocks; b++)
            {
                _sizes[b] = Interop.Lz4.CompressDefault(s + (long)b * Block, d + (long)b * bound, Block, bound);
                var managed = new byte[bound];
                int m = K4os.Compression.LZ4.LZ4Codec.Encode(_data.AsSpan(b * Block, Block), managed, K4os.Compression.LZ4.LZ4Level.L00_FAST);
                if (m != _sizes[b] || !managed.AsSpan(0, m).SequenceEqual(_compressed.AsSpan(b * bound, m)))
                    Console.WriteLine($"// block {b}: managed and native LZ4 output differ ({m} vs {_sizes[b]} bytes)");
            }
        }
        Console.WriteLine($"// {blocks} blocks of 64 KiB, LZ4 ratio {(double)_data.Length / _sizes.Sum():F2}");
    }

    /// <summary>
    /// The machine's shared libraries (regular files in /usr/lib/x86_64-linux-gnu and /usr/lib,
    /// not recursing, in name order) concatenated up to <paramref name="bytes"/>.
    /// </summary>
    internal static byte[]? SharedLibraryBytes(int bytes)
    {
        var buf = new byte[bytes];
        int at = 0;
        foreach (var dir in new[] { "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib" })
        {
            if (!Directory.Exists(dir))
                continue;
            foreach (var f in Directory.GetFiles(dir, "*.so*").Order(StringComparer.Ordinal))
            {
                if (at == bytes)
                    return buf;
                try
                {
                    var fi = new FileInfo(f);
                    if (fi.LinkTarget is not null || fi.Length < 4096)
                        continue;
                    using var s = File.OpenRead(f);
                    int want = (int)Math.Min(bytes - at, fi.Length);
                    at += s.ReadAtLeast(buf.AsSpan(at, want), want, throwOnEndOfStream: false);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    // Skip what cannot be read.
                }
            }
        }
        return at == bytes ? buf : null;
    }

    private int Blocks => _data.Length / Block;
    private int Bound => K4os.Compression.LZ4.LZ4Codec.MaximumOutputSize(Block);

    [BenchmarkCategory("Lz4Compress"), Benchmark(Baseline = true, Description = "liblz4 LZ4_compress_default, 64 KiB blocks")]
    public long Compress_Native()
    {
        long total = 0;
        int bound = Bound;
        var dst = new byte[bound];
        fixed (byte* s = _data)
        fixed (byte* d = dst)
            for (int b = 0; b < Blocks; b++)
                total += Interop.Lz4.CompressDefault(s + (long)b * Block, d, Block, bound);
        return total;
    }

    [BenchmarkCategory("Lz4Compress"), Benchmark(Description = "K4os LZ4Codec.Encode L00_FAST, 64 KiB blocks")]
    public long Compress_Managed()
    {
        long total = 0;
        var dst = new byte[Bound];
        for (int b = 0; b < Blocks; b++)
            total += K4os.Compression.LZ4.LZ4Codec.Encode(_data.AsSpan(b * Block, Block), dst, K4os.Compression.LZ4.LZ4Level.L00_FAST);
        return total;
    }

    [BenchmarkCategory("Lz4Decompress"), Benchmark(Baseline = true, Description = "liblz4 LZ4_decompress_safe, 64 KiB blocks")]
    public long Decompress_Native()
    {
        long total = 0;
        int bound = Bound;
        fixed (byte* s = _compressed)
        fixed (byte* d = _out)
            for (int b = 0; b < Blocks; b++)
                total += Interop.Lz4.DecompressSafe(s + (long)b * bound, d, _sizes[b], Block);
        return total;
    }

    [BenchmarkCategory("Lz4Decompress"), Benchmark(Description = "K4os LZ4Codec.Decode, 64 KiB blocks")]
    public long Decompress_Managed()
    {
        long total = 0;
        int bound = Bound;
        for (int b = 0; b < Blocks; b++)
            total += K4os.Compression.LZ4.LZ4Codec.Decode(_compressed.AsSpan(b * bound, _sizes[b]), _out);
        return total;
    }

    [BenchmarkCategory("Xxh3"), Benchmark(Baseline = true, Description = "libxxhash XXH3_64bits (dispatched), 4 KiB pages")]
    public ulong Xxh3_Native()
    {
        ulong acc = 0;
        fixed (byte* p = _data)
            for (int o = 0; o < _data.Length; o += PageGeometry.PageSize)
                acc += Interop.XxHash.Xxh3_64(p + o, PageGeometry.PageSize);
        return acc;
    }

    [BenchmarkCategory("Xxh3"), Benchmark(Description = "System.IO.Hashing XxHash3, 4 KiB pages")]
    public ulong Xxh3_Managed()
    {
        ulong acc = 0;
        for (int o = 0; o < _data.Length; o += PageGeometry.PageSize)
            acc += XxHash3.HashToUInt64(_data.AsSpan(o, PageGeometry.PageSize));
        return acc;
    }
}

namespace CriuSharp.ImageFormat;

/// <summary>A native compression call failed in a way that is not the input's fault.</summary>
public sealed class NativeCodecException(string library, string function, string detail)
    : Exception($"{library}: {function} failed: {detail}")
{
    public string Library { get; } = library;
    public string Function { get; } = function;
}

/// <summary>
/// One thread's compressor/decompressor for page blocks: LZ4 block format or a zstd frame, plus
/// the block checksum. Holds the zstd contexts so they are reused across blocks; not thread-safe.
/// </summary>
internal sealed unsafe class BlockCodec : IDisposable
{
    private readonly PageCompression _compression;
    private readonly int _level;
    private readonly bool _nativeLz4;
    private Interop.SafeZstdCompressContext? _cctx;
    private Interop.SafeZstdDecompressContext? _dctx;

    public BlockCodec(PageCompression compression, int level)
    {
        _compression = compression;
        _level = level;
        _nativeLz4 = Lz4Engines.Effective == Lz4Engine.Native;
        // K4os exposes LZ4_compress_default's acceleration only; a faster setting would need
        // liblz4, and silently compressing differently would change the image bytes.
        if (compression == PageCompression.Lz4 && !_nativeLz4 && level > 1)
            throw new ArgumentOutOfRangeException(nameof(level), level, "the managed LZ4 codec supports acceleration 1 only");
    }

    /// <summary>Worst-case output for <paramref name="inputSize"/> bytes (the native bound functions).</summary>
    public static int MaxCompressedSize(PageCompression compression, int inputSize) => compression switch
    {
        // LZ4_COMPRESSBOUND (lz4.h): the same formula in both engines.
        PageCompression.Lz4 => K4os.Compression.LZ4.LZ4Codec.MaximumOutputSize(inputSize),
        PageCompression.Zstd => checked((int)Interop.Zstd.CompressBound((nuint)inputSize)),
        _ => inputSize,
    };

    /// <summary>Compresses into <paramref name="dst"/>; returns the compressed length.</summary>
    public int Compress(ReadOnlySpan<byte> src, Span<byte> dst)
    {
        fixed (byte* s = src)
        fixed (byte* d = dst)
        {
            switch (_compression)
            {
                case PageCompression.Lz4 when _nativeLz4:
                {
                    int n = Interop.Lz4.CompressFast(s, d, src.Length, dst.Length, _level);
                    if (n <= 0)
                        throw new NativeCodecException(Interop.Libraries.Lz4, "LZ4_compress_fast", $"returned {n} for {src.Length} bytes into {dst.Length}");
                    return n;
                }
                case PageCompression.Lz4:
                {
                    int n = K4os.Compression.LZ4.LZ4Codec.Encode(s, src.Length, d, dst.Length, K4os.Compression.LZ4.LZ4Level.L00_FAST);
                    if (n <= 0)
                        throw new NativeCodecException("K4os.Compression.LZ4", "LZ4Codec.Encode", $"returned {n} for {src.Length} bytes into {dst.Length}");
                    return n;
                }
                case PageCompression.Zstd:
                {
                    _cctx ??= CreateCCtx();
                    nuint n = Interop.Zstd.CompressCCtx(_cctx, d, (nuint)dst.Length, s, (nuint)src.Length, _level);
                    if (Interop.Zstd.IsError(n) != 0)
                        throw new NativeCodecException(Interop.Libraries.Zstd, "ZSTD_compressCCtx", Interop.Zstd.ErrorName(n));
                    return (int)n;
                }
                default:
                    throw new InvalidOperationException("no codec for uncompressed pages");
            }
        }
    }

    /// <summary>
    /// Decompresses exactly <paramref name="dst"/>.Length bytes; returns null on success or the
    /// reason the input is malformed (the caller knows the file and offset to report).
    /// </summary>
    public string? TryDecompress(ReadOnlySpan<byte> src, Span<byte> dst)
    {
        fixed (byte* s = src)
        fixed (byte* d = dst)
        {
            switch (_compression)
            {
                case PageCompression.Lz4 when _nativeLz4:
                {
                    int n = Interop.Lz4.DecompressSafe(s, d, src.Length, dst.Length);
                    if (n < 0)
                        return $"LZ4_decompress_safe rejected the block ({n})";
                    return n == dst.Length ? null : $"block decompressed to {n} bytes, expected {dst.Length}";
                }
                case PageCompression.Lz4:
                {
                    int n = K4os.Compression.LZ4.LZ4Codec.Decode(s, src.Length, d, dst.Length);
                    if (n < 0)
                        return $"LZ4 decoder rejected the block ({n})";
                    return n == dst.Length ? null : $"block decompressed to {n} bytes, expected {dst.Length}";
                }
                case PageCompression.Zstd:
                {
                    _dctx ??= CreateDCtx();
                    nuint n = Interop.Zstd.DecompressDCtx(_dctx, d, (nuint)dst.Length, s, (nuint)src.Length);
                    if (Interop.Zstd.IsError(n) != 0)
                        return $"ZSTD_decompressDCtx: {Interop.Zstd.ErrorName(n)}";
                    return n == (nuint)dst.Length ? null : $"block decompressed to {n} bytes, expected {dst.Length}";
                }
                default:
                    return "no codec for uncompressed pages";
            }
        }
    }

    /// <summary>
    /// XXH3-64 (seed 0). libxxhash measured faster here than System.IO.Hashing's XxHash3 on 4 KiB
    /// pages (bench <c>LibraryBenchmarks</c>), so it stays the default; the managed one, which
    /// computes the same values, takes over when libxxhash.so.0 is absent.
    /// </summary>
    public static ulong Checksum(ReadOnlySpan<byte> data)
    {
        if (!Interop.XxHash.Available)
            return System.IO.Hashing.XxHash3.HashToUInt64(data);
        fixed (byte* p = data)
            return Interop.XxHash.Xxh3_64(p, (nuint)data.Length);
    }

    private static Interop.SafeZstdCompressContext CreateCCtx()
    {
        var c = Interop.Zstd.CreateCCtx();
        if (c.IsInvalid)
            throw new NativeCodecException(Interop.Libraries.Zstd, "ZSTD_createCCtx", "out of memory");
        return c;
    }

    private static Interop.SafeZstdDecompressContext CreateDCtx()
    {
        var c = Interop.Zstd.CreateDCtx();
        if (c.IsInvalid)
            throw new NativeCodecException(Interop.Libraries.Zstd, "ZSTD_createDCtx", "out of memory");
        return c;
    }

    public void Dispose()
    {
        _cctx?.Dispose();
        _dctx?.Dispose();
    }
}

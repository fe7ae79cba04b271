namespace CriuSharp.ImageFormat;

/// <summary>How a pagemap's pages are stored.</summary>
public sealed record PageStoreOptions
{
    /// <summary>CRIU's raw pages-N.img, readable by CRIU itself.</summary>
    public static PageStoreOptions Raw { get; } = new();

    public static PageStoreOptions Lz4(int blockPages = 16, int acceleration = 1) =>
        new() { Compression = PageCompression.Lz4, BlockPages = blockPages, Level = acceleration };

    public static PageStoreOptions Zstd(int blockPages = 16, int level = 3) =>
        new() { Compression = PageCompression.Zstd, BlockPages = blockPages, Level = level };

    public PageCompression Compression { get; init; } = PageCompression.None;

    /// <summary>
    /// Pages per compressed block, 1 (per-page mode: any page decompressed alone) to 64 (256 KiB
    /// regions: better ratio, a read decompresses up to 64 pages). Ignored for <see cref="PageCompression.None"/>.
    /// </summary>
    public int BlockPages { get; init; } = 16;

    /// <summary>LZ4 acceleration (1 = LZ4_compress_default) or zstd level. 0 picks the codec's default.</summary>
    public int Level { get; init; }

    /// <summary>
    /// Threads used to compress one large run. Output is identical for any value: each block is
    /// compressed on its own and blocks are written in order.
    /// </summary>
    public int Parallelism { get; init; } = 1;

    /// <summary>
    /// Also write pagemap_entry field 5 (CRIU 4.2's 64-bit nr_pages) next to field 2. On by
    /// default so both old and new CRIU read the count; off gives 3.17.1's bytes exactly.
    /// </summary>
    public bool WriteNrPages64 { get; init; } = true;

    internal int EffectiveLevel => Level != 0 ? Level : Compression == PageCompression.Zstd ? 3 : 1;

    internal void Validate()
    {
        if (!Enum.IsDefined(Compression))
            throw new ArgumentOutOfRangeException(nameof(Compression), Compression, "unknown compression");
        if (Compression != PageCompression.None && (BlockPages < 1 || BlockPages > PageGeometry.MaxBlockPages))
            throw new ArgumentOutOfRangeException(nameof(BlockPages), BlockPages, $"block size must be 1..{PageGeometry.MaxBlockPages} pages");
        if (Parallelism < 1)
            throw new ArgumentOutOfRangeException(nameof(Parallelism), Parallelism, "must be at least 1");
    }

    /// <summary>Parses the CLI spelling: none, lz4, zstd.</summary>
    public static PageCompression ParseCompression(string text) => text.ToLowerInvariant() switch
    {
        "none" or "raw" => PageCompression.None,
        "lz4" => PageCompression.Lz4,
        "zstd" => PageCompression.Zstd,
        _ => throw new ArgumentException($"unknown compression '{text}' (expected none, lz4 or zstd)"),
    };
}

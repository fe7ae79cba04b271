namespace CriuSharp.ImageFormat;

/// <summary>PE_* flags of pagemap_entry.flags (criu/include/pagemap.h).</summary>
[Flags]
public enum PagemapFlags : uint
{
    None = 0,
    /// <summary>The bytes live in the parent image set; nothing in this pages file.</summary>
    Parent = 1 << 0,
    /// <summary>May be restored on demand; with <see cref="Present"/> the bytes are still stored.</summary>
    Lazy = 1 << 1,
    /// <summary>The bytes are in this pages-N.img at the running offset.</summary>
    Present = 1 << 2,
    /// <summary>
    /// criu-sharp: each page is a delta (<see cref="PageDelta"/>) against the same page in the
    /// parent chain, stored in deltas-N.img; no bytes in pages-N.img. CRIU has no such bit: only
    /// images written with deltas carry it.
    /// </summary>
    Delta = 1 << 16,
}

/// <summary>How PE_DELTA pages are encoded; stored in pagemap_head.delta_encoding (field 1004).</summary>
public enum DeltaEncoding : uint
{
    None = 0,
    /// <summary>QEMU's XBZRLE byte grammar, see <see cref="PageDelta"/>.</summary>
    Xbzrle = 1,
}

/// <summary>Page geometry of the images (x86_64 base pages; CRIU images assume 4 KiB).</summary>
public static class PageGeometry
{
    public const int PageSize = 4096;
    public const int PageShift = 12;

    /// <summary>Largest block: 64 pages = 256 KiB, the default region of CRIU's compression proposal.</summary>
    public const int MaxBlockPages = 64;
}

/// <summary>How pages-N.img is encoded; the value is stored in pagemap_head.compression (field 1000).</summary>
public enum PageCompression : uint
{
    /// <summary>CRIU's raw layout, byte for byte: every PE_PRESENT page, zero or not, back to back.</summary>
    None = 0,
    Lz4 = 1,
    Zstd = 2,
}

/// <summary>Checksum of each stored block; stored in pagemap_head.checksum (field 1002).</summary>
public enum BlockChecksum : uint
{
    None = 0,
    /// <summary>XXH3 64-bit of the block's bytes as stored in the pages file.</summary>
    Xxh3_64 = 1,
}

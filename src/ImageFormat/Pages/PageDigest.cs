namespace CriuSharp.ImageFormat;

/// <summary>
/// A position-bound digest of one 4 KiB page, for checksums of memory contents that must not
/// depend on the order pages are visited in: a range's checksum is the wrapping sum of its pages'
/// digests. An all-zero page digests to 0, so an unpopulated page, the zero page and a page of
/// zeros are the same (as they are to the task that reads them).
/// <code>
///   digest(va, page) = 0                                   if every byte is 0
///                    = mix64(XXH3_64(page) ^ va * φ)      otherwise (φ = 0x9E3779B97F4A7C15)
/// </code>
/// </summary>
public static class PageDigest
{
    /// <summary>XXH3 of a 4 KiB page of zeros: the only hash for which a page must be scanned for zeros.</summary>
    private static readonly ulong ZeroPageHash = BlockCodec.Checksum(new byte[PageGeometry.PageSize]);

    /// <summary>
    /// One pass over the page: it is hashed, and only a page whose hash is that of the zero page
    /// is then scanned to tell a zero page from a (practically impossible) collision.
    /// </summary>
    public static ulong Of(ulong va, ReadOnlySpan<byte> page)
    {
        ulong h = BlockCodec.Checksum(page);
        if (page.Length == PageGeometry.PageSize ? h == ZeroPageHash : page.IndexOfAnyExcept((byte)0) < 0)
            if (page.IndexOfAnyExcept((byte)0) < 0)
                return 0;
        return Mix(h, va);
    }

    /// <summary>The digest of a page already known to hold a non-zero byte.</summary>
    public static ulong OfNonZero(ulong va, ReadOnlySpan<byte> page) => Mix(BlockCodec.Checksum(page), va);

    private static ulong Mix(ulong hash, ulong va)
    {
        ulong z = hash ^ (va * 0x9E3779B97F4A7C15UL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        // 0 is reserved for zero pages.
        return z == 0 ? 1 : z;
    }
}

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
    public static ulong Of(ulong va, ReadOnlySpan<byte> page) =>
        page.IndexOfAnyExcept((byte)0) < 0 ? 0 : OfNonZero(va, page);

    /// <summary>The digest of a page already known to hold a non-zero byte.</summary>
    public static ulong OfNonZero(ulong va, ReadOnlySpan<byte> page)
    {
        ulong z = BlockCodec.Checksum(page) ^ (va * 0x9E3779B97F4A7C15UL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        // 0 is reserved for zero pages.
        return z == 0 ? 1 : z;
    }
}

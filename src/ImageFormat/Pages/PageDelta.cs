using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

/// <summary>
/// XOR-based zero-run-length encoding of a page against its previous version, in the byte
/// grammar of QEMU's XBZRLE (migration/xbzrle.c, docs/devel/migration/xbzrle.rst):
/// <code>
///   delta = zrun nzrun | zrun nzrun delta        (the trailing zero run is not written)
///   zrun  = length                                bytes where old XOR new == 0: keep the old byte
///   nzrun = length byte...                        bytes of the new page, copied as they are
///   length = ULEB128
/// </code>
/// Only the first zero run may have length 0; every literal run has length ≥ 1. An unchanged
/// page encodes to 0 bytes. Where the encoders differ: QEMU ends a literal run at the first equal
/// byte; this one ends it only where 8 consecutive bytes are equal (a run boundary costs at least
/// two length bytes, so breaking a literal run for fewer equal bytes rarely shrinks the delta),
/// which lets both runs be found with vectorised compares. Any delta this encoder writes is a
/// valid QEMU XBZRLE stream and the decoder accepts QEMU's.
/// </summary>
public static class PageDelta
{
    /// <summary>
    /// Encodes <paramref name="current"/> against <paramref name="previous"/> (same length) into
    /// <paramref name="destination"/>; returns the bytes written, or -1 when the delta would not
    /// fit (QEMU's "overflow": the caller sends the page some other way).
    /// </summary>
    public static int Encode(ReadOnlySpan<byte> previous, ReadOnlySpan<byte> current, Span<byte> destination)
    {
        if (previous.Length != current.Length)
            throw new ArgumentException("the two versions differ in length");
        int n = current.Length, i = 0, d = 0;
        while (i < n)
        {
            int zrun = previous[i..].CommonPrefixLength(current[i..]);
            if (i + zrun == n)
                break;
            int start = i + zrun;
            int end = NonZeroRunEnd(previous, current, start);
            if (!TryLeb(destination, ref d, (uint)zrun) || !TryLeb(destination, ref d, (uint)(end - start)))
                return -1;
            int len = end - start;
            if (d + len > destination.Length)
                return -1;
            current.Slice(start, len).CopyTo(destination[d..]);
            d += len;
            i = end;
        }
        return d;
    }

    /// <summary>
    /// The end of the literal run that starts at <paramref name="start"/> (where the versions
    /// differ): the first 8-byte window from there on in which they agree, with equal bytes just
    /// before it given back to the following zero run; or the end of the page.
    /// </summary>
    private static int NonZeroRunEnd(ReadOnlySpan<byte> previous, ReadOnlySpan<byte> current, int start)
    {
        int n = current.Length;
        int j = start + 1;
        ref byte po = ref MemoryMarshal.GetReference(previous);
        ref byte pc = ref MemoryMarshal.GetReference(current);
        while (j + 8 <= n)
        {
            ulong x = Unsafe8(ref po, j) ^ Unsafe8(ref pc, j);
            if (x == 0)
                break;
            // Skip past the last differing byte of the window: no equal 8-byte window can start
            // at or before it.
            int lastDiff = 7 - (System.Numerics.BitOperations.LeadingZeroCount(x) >> 3);
            j += lastDiff + 1;
        }
        if (j + 8 > n)
            j = n;
        while (j > start + 1 && previous[j - 1] == current[j - 1])
            j--;
        return j;
    }

    private static ulong Unsafe8(ref byte b, int at) =>
        BinaryPrimitives.ReadUInt64LittleEndian(MemoryMarshal.CreateReadOnlySpan(ref System.Runtime.CompilerServices.Unsafe.Add(ref b, at), 8));

    private static bool TryLeb(Span<byte> dst, ref int d, uint v)
    {
        do
        {
            if (d >= dst.Length)
                return false;
            byte b = (byte)(v & 0x7f);
            v >>= 7;
            dst[d++] = v != 0 ? (byte)(b | 0x80) : b;
        }
        while (v != 0);
        return true;
    }

    /// <summary>
    /// Applies <paramref name="delta"/> to <paramref name="page"/>, which holds the previous
    /// version and receives the new one. Returns null, or what is wrong with the delta (runs past
    /// the page, a zero-length run, a truncated length); the page is then partly patched.
    /// </summary>
    public static string? TryApply(ReadOnlySpan<byte> delta, Span<byte> page)
    {
        int i = 0, d = 0, n = page.Length;
        while (d < delta.Length)
        {
            if (!TryReadLeb(delta, ref d, out uint zrun))
                return $"truncated zero-run length at delta byte {d}";
            if (zrun == 0 && i != 0)
                return $"zero-length zero run at delta byte {d}";
            if (zrun > (uint)(n - i))
                return $"zero run of {zrun} bytes runs past the page at offset {i}";
            i += (int)zrun;
            if (d >= delta.Length)
                return $"zero run without a literal run at delta byte {d}";
            if (!TryReadLeb(delta, ref d, out uint nz))
                return $"truncated literal-run length at delta byte {d}";
            if (nz == 0)
                return $"zero-length literal run at delta byte {d}";
            if (nz > (uint)(n - i) || nz > (uint)(delta.Length - d))
                return $"literal run of {nz} bytes runs past the page or the delta at offset {i}";
            delta.Slice(d, (int)nz).CopyTo(page[i..]);
            d += (int)nz;
            i += (int)nz;
        }
        return null;
    }

    private static bool TryReadLeb(ReadOnlySpan<byte> src, ref int d, out uint v)
    {
        v = 0;
        for (int shift = 0; shift < 35; shift += 7)
        {
            if (d >= src.Length)
                return false;
            byte b = src[d++];
            v |= (uint)(b & 0x7f) << shift;
            if ((b & 0x80) == 0)
                return true;
        }
        return false;
    }

    /// <summary>Checksum of a page's new contents stored with its delta (XXH3-64, as the blocks').</summary>
    public static ulong Checksum(ReadOnlySpan<byte> page) => BlockCodec.Checksum(page);
}

/// <summary>
/// Sizes pages as an image stores them: one 4 KiB page compressed alone (<see cref="StoredSize"/>:
/// 0 for an all-zero page, which a compressed image records as a bit; the page size when it does
/// not shrink or the image is raw), or each page's share of its compressed block
/// (<see cref="BlockShares"/>), which is what a delta has to beat.
/// </summary>
public sealed class PageSizeEstimator : IDisposable
{
    private readonly BlockCodec? _codec;
    private readonly byte[] _out;
    private readonly int _blockPages;

    public PageSizeEstimator(PageStoreOptions options)
    {
        if (options.Compression != PageCompression.None)
            _codec = new BlockCodec(options.Compression, options.EffectiveLevel);
        _blockPages = options.Compression == PageCompression.None ? 1 : Math.Max(1, options.BlockPages);
        _out = new byte[BlockCodec.MaxCompressedSize(options.Compression, _blockPages * PageGeometry.PageSize)];
    }

    /// <summary>Bytes <paramref name="pages"/> take stored as one run: compressed in the image's blocks, all-zero pages left out.</summary>
    public int RunSize(ReadOnlySpan<byte> pages) => BlockShares(pages, []);

    /// <summary>
    /// Each page's share of the stored bytes when <paramref name="pages"/> are compressed in the
    /// image's blocks (block after block from the first page): a block's compressed size split
    /// evenly over its non-zero pages, 0 for an all-zero page. This is what leaving a page in its
    /// run costs, and what a delta has to beat: a page compressed alone can be many times larger
    /// (text-like pages compress 10× alone and 100× in 64 KiB blocks), so comparing with it would
    /// send deltas that cost more than the block bytes they replace.
    /// </summary>
    /// <param name="pages">Whole pages.</param>
    /// <param name="shares">One share per page, or empty when only the total is wanted.</param>
    /// <returns>The bytes of all the blocks: <see cref="RunSize"/> of <paramref name="pages"/>.</returns>
    public int BlockShares(ReadOnlySpan<byte> pages, Span<int> shares)
    {
        const int ps = PageGeometry.PageSize;
        int n = pages.Length / ps, total = 0;
        for (int first = 0; first < n; first += _blockPages)
        {
            int count = Math.Min(_blockPages, n - first);
            var block = pages.Slice(first * ps, count * ps);
            int nonZero = 0;
            for (int i = 0; i < count; i++)
                if (block.Slice(i * ps, ps).IndexOfAnyExcept((byte)0) >= 0)
                    nonZero++;
            int stored = nonZero == 0 ? 0 : _codec is null ? nonZero * ps : Math.Min(nonZero * ps, _codec.Compress(block, _out));
            total += stored;
            if (shares.IsEmpty)
                continue;
            int share = nonZero == 0 ? 0 : (stored + nonZero - 1) / nonZero;
            for (int i = 0; i < count; i++)
                shares[first + i] = block.Slice(i * ps, ps).IndexOfAnyExcept((byte)0) >= 0 ? share : 0;
        }
        return total;
    }

    public int StoredSize(ReadOnlySpan<byte> page)
    {
        if (_codec is null)
            return PageGeometry.PageSize;
        if (page.IndexOfAnyExcept((byte)0) < 0)
            return 0;
        return Math.Min(PageGeometry.PageSize, _codec.Compress(page, _out));
    }

    public void Dispose() => _codec?.Dispose();
}

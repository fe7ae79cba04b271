using System.Buffers.Binary;
using CriuSharp.ImageFormat.Images;
using Google.Protobuf;

namespace CriuSharp.ImageFormat;

/// <summary>
/// The content tracker's per-page digests of one task, as held in <c>page-digests-PID.img</c>:
/// <code>
///   runs:    [vaddr₀, n₀) [vaddr₁, n₁) ...      ascending, non-overlapping, 4 KiB pages
///   digests:  d d d ... d | d d ... | ...        one PageDigest per page, runs concatenated
/// </code>
/// A digest is <see cref="PageDigest.Of"/> (position-bound XXH3; 0 for a zero page), so the same
/// bytes moved to another address count as changed, as they would for the pagemap.
/// Lookups from a pre-dump arrive in ascending address order; a cursor makes them O(1) each.
/// </summary>
public sealed class PageDigestMap
{
    private readonly List<(ulong Va, int Count, int First)> _runs = [];
    private ulong[] _digests = new ulong[1024];
    private int _count;
    private int _cursor;

    /// <summary>Pages held.</summary>
    public int Count => _count;

    /// <summary>Appends the digest of the page at <paramref name="va"/>; pages must come in ascending order.</summary>
    public void Add(ulong va, ulong digest)
    {
        if (_count == _digests.Length)
            Array.Resize(ref _digests, _digests.Length * 2);
        if (_runs.Count > 0)
        {
            var last = _runs[^1];
            ulong next = last.Va + ((ulong)last.Count << PageGeometry.PageShift);
            if (va < next)
                throw new ArgumentException($"page digests must be added in ascending address order (0x{va:x} after 0x{next:x})", nameof(va));
            if (va == next)
            {
                _runs[^1] = (last.Va, last.Count + 1, last.First);
                _digests[_count++] = digest;
                return;
            }
        }
        _runs.Add((va, 1, _count));
        _digests[_count++] = digest;
    }

    /// <summary>
    /// Appends the digests of <paramref name="digests"/>.Length consecutive pages from
    /// <paramref name="va"/>, as that many <see cref="Add"/> calls would (ascending order).
    /// </summary>
    public void AddRange(ulong va, ReadOnlySpan<ulong> digests)
    {
        int count = digests.Length;
        if (count == 0)
            return;
        if (_runs.Count > 0)
        {
            var last = _runs[^1];
            ulong next = End(last);
            if (va < next)
                throw new ArgumentException($"page digests must be added in ascending address order (0x{va:x} after 0x{next:x})", nameof(va));
        }
        if (_count + count > _digests.Length)
            Array.Resize(ref _digests, Math.Max(_digests.Length * 2, _count + count));
        digests.CopyTo(_digests.AsSpan(_count));
        if (_runs.Count > 0 && End(_runs[^1]) == va)
            _runs[^1] = (_runs[^1].Va, _runs[^1].Count + count, _runs[^1].First);
        else
            _runs.Add((va, count, _count));
        _count += count;
    }

    /// <summary>
    /// The digests of the <paramref name="count"/> pages from <paramref name="va"/> when the map
    /// holds all of them in one run (the usual case for a parent of the same VMA), else empty:
    /// one lookup instead of one per page.
    /// </summary>
    public ReadOnlySpan<ulong> Run(ulong va, int count)
    {
        int i = IndexOf(va);
        if (i < 0)
            return default;
        var r = _runs[_cursor];
        return End(r) - va >= (ulong)count << PageGeometry.PageShift ? _digests.AsSpan(i, count) : default;
    }

    /// <summary>The digest recorded for the page at <paramref name="va"/>, if any.</summary>
    public bool TryGet(ulong va, out ulong digest)
    {
        int i = IndexOf(va);
        digest = i < 0 ? 0 : _digests[i];
        return i >= 0;
    }

    /// <summary>
    /// Replaces the digest of a page the map holds (a page added with a placeholder and digested
    /// later); returns false, changing nothing, for a page it does not hold.
    /// </summary>
    public bool TrySet(ulong va, ulong digest)
    {
        int i = IndexOf(va);
        if (i >= 0)
            _digests[i] = digest;
        return i >= 0;
    }

    private int IndexOf(ulong va)
    {
        if (_runs.Count == 0)
            return -1;
        if (_cursor >= _runs.Count || _runs[_cursor].Va > va)
            _cursor = 0;
        // Forward from the cursor; a jump far ahead falls back to binary search.
        while (_cursor < _runs.Count && End(_runs[_cursor]) <= va)
        {
            if (_cursor + 8 < _runs.Count && End(_runs[_cursor + 8]) <= va)
            {
                _cursor = Search(va);
                break;
            }
            _cursor++;
        }
        if (_cursor >= _runs.Count)
            return -1;
        var r = _runs[_cursor];
        if (va < r.Va)
            return -1;
        return r.First + (int)((va - r.Va) >> PageGeometry.PageShift);
    }

    private static ulong End((ulong Va, int Count, int First) r) => r.Va + ((ulong)r.Count << PageGeometry.PageShift);

    private int Search(ulong va)
    {
        int lo = 0, hi = _runs.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (End(_runs[mid]) <= va) lo = mid + 1; else hi = mid;
        }
        return lo;
    }

    public IEnumerable<page_digests_entry> ToEntries()
    {
        foreach (var (va, count, first) in _runs)
        {
            var bytes = new byte[count * 8];
            for (int i = 0; i < count; i++)
                BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(i * 8), _digests[first + i]);
            // The array is not touched again: the entry may own it without a copy.
            yield return new page_digests_entry { Vaddr = va, NrPages = (uint)count, Digests = UnsafeByteOperations.UnsafeWrap(bytes) };
        }
    }

    /// <summary>Appends a run of digests at <paramref name="va"/> (little-endian, 8 bytes each); the run must lie above every page held.</summary>
    private void AddRun(ulong va, ReadOnlySpan<byte> digests)
    {
        int count = digests.Length / 8;
        if (count == 0)
            return;
        if (_runs.Count > 0)
        {
            var last = _runs[^1];
            ulong next = last.Va + ((ulong)last.Count << PageGeometry.PageShift);
            if (va < next)
                throw new ArgumentException($"page digests must be added in ascending address order (0x{va:x} after 0x{next:x})", nameof(va));
        }
        if (_count + count > _digests.Length)
            Array.Resize(ref _digests, Math.Max(_digests.Length * 2, _count + count));
        for (int i = 0; i < count; i++)
            _digests[_count + i] = BinaryPrimitives.ReadUInt64LittleEndian(digests[(i * 8)..]);
        if (_runs.Count > 0 && End(_runs[^1]) == va)
            _runs[^1] = (_runs[^1].Va, _runs[^1].Count + count, _runs[^1].First);
        else
            _runs.Add((va, count, _count));
        _count += count;
    }

    /// <summary>Rebuilds the map from an image's entries; throws <see cref="ImageFormatException"/> on a malformed one.</summary>
    public static PageDigestMap FromEntries(IEnumerable<page_digests_entry> entries, string path)
    {
        var map = new PageDigestMap();
        foreach (var e in entries)
        {
            if (e.Digests.Length != (long)e.NrPages * 8)
                throw new ImageFormatException(path, ImageKind.PageDigests.Name, null, $"page digests at 0x{e.Vaddr:x}: {e.Digests.Length} bytes for {e.NrPages} pages");
            if ((e.Vaddr & (PageGeometry.PageSize - 1)) != 0)
                throw new ImageFormatException(path, ImageKind.PageDigests.Name, null, $"page digests at 0x{e.Vaddr:x}: address not page-aligned");
            try
            {
                map.AddRun(e.Vaddr, e.Digests.Span);
            }
            catch (ArgumentException x)
            {
                throw new ImageFormatException(path, ImageKind.PageDigests.Name, null, $"page digests: {x.Message}");
            }
        }
        return map;
    }
}

using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>
/// Decides, page by page, how a pre-dump sends a page the tracker reported written:
/// <code>
///  parent pagemap does not cover va              → written as today (no base on the other side)
///  digest == digest of the chain's version        → PE_PARENT hole          (elision)
///  chain's version in the delta cache, and
///    delta + entry cost &lt; page's share of its
///    compressed block                             → PE_DELTA, delta in deltas-N.img
///  otherwise                                      → written as today (PE_PRESENT, compressed)
/// </code>
/// Runs of same-kind pages go to the <see cref="PagemapWriter"/> together. Each technique pays
/// for itself: a page is elided only if it is identical; a page is a delta candidate only if its
/// delta beats its share of its compressed block, and an iovec keeps its candidates only if they
/// store fewer bytes than its pages left whole, counting the runs they cut (sized by compressing
/// the pieces); after an iteration where fewer than one hit in eight became a delta, deltas are
/// not tried for a few iterations (<see cref="SentPages.DeltaActive"/>).
/// </summary>
internal sealed class PageSieve : IDisposable
{
    /// <summary>
    /// Metadata a delta page adds beyond a present page's: its own pagemap entry (vaddr, nr_pages,
    /// flags ≈ 15 B), its size and checksum in the ext-pagemap sidecar (≈ 18 B) and, when it
    /// splits a present run, a second entry for the rest of the run with its sidecar data (≈ 25 B).
    /// Measured on a recorded real program (hotset.c, one pre-dump): 755 delta pages grew
    /// pagemap-PID.img and ext-pagemap-PID.img by 33.6 KB together, 44.5 B per delta page. A
    /// delta must beat the page's share of its compressed block by this much.
    /// </summary>
    internal const int DeltaEntryCost = 48;

    private readonly SentPages _history;
    private readonly int _pid;
    private readonly PagemapImage? _parent;
    private readonly PageSizeEstimator? _estimator;
    private byte[] _deltaBuf = [];
    private Kind[] _kinds = [];
    private int[] _deltaAt = [0];
    private ulong[] _digests = [];
    private int[] _shares = [];
    private int _sharesTotal;
    private bool _sharesReady;
    private ulong _elided, _hits, _misses, _overflows, _deltas, _deltaBytes, _saved;

    public PageSieve(SentPages history, int pid, PagemapImage? parent, PageStoreOptions store)
    {
        _history = history;
        _pid = pid;
        _parent = parent;
        if (history.Delta)
            _estimator = new PageSizeEstimator(store);
    }

    /// <summary>Raw bytes compressed to size pages up for deltas (each iovec holding a cache hit, in blocks, once).</summary>
    public ulong EstimatedBytes { get; private set; }

    public DeltaCounters Counters => new()
    {
        PagesElided = _elided, CacheHits = _hits, CacheMisses = _misses, Overflows = _overflows,
        PagesDelta = _deltas, DeltaBytes = _deltaBytes, BytesSaved = _saved,
    };

    private enum Kind : byte { Present, Hole, Delta }

    /// <summary>Writes one iovec of copied pages; <paramref name="writePresent"/> takes runs that go out whole.</summary>
    public void Write(PagemapWriter writer, ulong va, ReadOnlySpan<byte> bytes, Action<ulong, ReadOnlySpan<byte>> writePresent)
    {
        const int ps = PageGeometry.PageSize;
        int n = bytes.Length / ps;
        _sharesReady = false;
        if (_kinds.Length < n)
        {
            _kinds = new Kind[Math.Max(n, _kinds.Length * 2)];
            _deltaAt = new int[_kinds.Length + 1];
            _digests = new ulong[_kinds.Length];
        }
        if (_deltaBuf.Length < n * ps)
            _deltaBuf = new byte[Math.Max(n * ps, _deltaBuf.Length * 2)];
        // First every page is decided against the state before this iovec, then the iovec as a
        // whole keeps its deltas only if they pay once the runs they cut are counted.
        int deltas = 0;
        _deltaAt[0] = 0;
        for (int i = 0; i < n; i++)
        {
            ulong a = va + ((ulong)i << PageGeometry.PageShift);
            _digests[i] = PageDigest.Of(a, bytes.Slice(i * ps, ps));
            _kinds[i] = Decide(a, bytes, i, _digests[i], _deltaBuf.AsSpan(_deltaAt[i]), out int deltaLen);
            _deltaAt[i + 1] = _deltaAt[i] + deltaLen;
            if (_kinds[i] == Kind.Delta)
                deltas++;
        }
        if (deltas > 0 && !DeltasPay(bytes, n))
        {
            for (int i = 0; i < n; i++)
                if (_kinds[i] == Kind.Delta)
                {
                    _kinds[i] = Kind.Present;
                    _overflows++;
                }
            deltas = 0;
        }

        int runStart = 0;
        Kind runKind = Kind.Present;
        for (int i = 0; i < n; i++)
        {
            ulong a = va + ((ulong)i << PageGeometry.PageShift);
            var page = bytes.Slice(i * ps, ps);
            var kind = _kinds[i];
            if (kind != runKind || kind == Kind.Delta)
            {
                Flush(writer, va, bytes, runStart, i, runKind, writePresent);
                runStart = i;
                runKind = kind;
            }
            if (kind == Kind.Delta)
            {
                int len = _deltaAt[i + 1] - _deltaAt[i];
                writer.AddDelta(a, _deltaBuf.AsSpan(_deltaAt[i], len), PageDelta.Checksum(page));
                _deltas++;
                _deltaBytes += (ulong)len;
                _saved += (ulong)(Share(bytes, i) - len);
                runStart = i + 1;
                runKind = Kind.Present;
            }
            if (kind != Kind.Hole)
                _history.Sent(_pid, a, _digests[i], page);
        }
        Flush(writer, va, bytes, runStart, n, runKind, writePresent);
    }

    /// <summary>Metadata of one pagemap entry with its sidecar data (vaddr, nr_pages, flags; block sizes and checksums).</summary>
    private const int EntryCost = 25;

    /// <summary>Metadata of one delta page in its entry: its size and checksum in the sidecar.</summary>
    private const int DeltaPageCost = 18;

    /// <summary>
    /// Do the iovec's candidate deltas store fewer bytes than the same pages left in their runs?
    /// A delta cuts a present run in two, and each piece is compressed in blocks of its own: on
    /// pages that compress well together (text, repeated structures) the pieces can cost more than
    /// the deltas save. Both layouts are sized (the pieces compressed once more), holes alike in both.
    /// </summary>
    private bool DeltasPay(ReadOnlySpan<byte> bytes, int n)
    {
        const int ps = PageGeometry.PageSize;
        long without = 0, with = 0;
        for (int i = 0; i < n;)
        {
            if (_kinds[i] == Kind.Hole) { i++; continue; }
            int j = i;
            while (j < n && _kinds[j] != Kind.Hole)
                j++;
            // [i, j): a run without holes; as present pages alone, or cut by its deltas. The
            // whole iovec was already compressed in its blocks to size the pages up.
            without += (i == 0 && j == n ? _sharesTotal : _estimator!.RunSize(bytes.Slice(i * ps, (j - i) * ps))) + EntryCost;
            if (i != 0 || j != n)
                EstimatedBytes += (ulong)((j - i) * ps);
            for (int k = i; k < j;)
            {
                int m = k;
                if (_kinds[k] == Kind.Delta)
                {
                    while (m < j && _kinds[m] == Kind.Delta)
                    {
                        with += _deltaAt[m + 1] - _deltaAt[m] + DeltaPageCost;
                        m++;
                    }
                    with += EntryCost;
                }
                else
                {
                    while (m < j && _kinds[m] == Kind.Present)
                        m++;
                    with += _estimator!.RunSize(bytes.Slice(k * ps, (m - k) * ps)) + EntryCost;
                    EstimatedBytes += (ulong)((m - k) * ps);
                }
                k = m;
            }
            i = j;
        }
        return with < without;
    }

    private static void Flush(PagemapWriter writer, ulong va, ReadOnlySpan<byte> bytes, int from, int to, Kind kind,
        Action<ulong, ReadOnlySpan<byte>> writePresent)
    {
        if (to <= from)
            return;
        ulong a = va + ((ulong)from << PageGeometry.PageShift);
        if (kind == Kind.Hole)
            writer.AddParentHole(a, (ulong)(to - from));
        else if (kind == Kind.Present)
            writePresent(a, bytes.Slice(from * PageGeometry.PageSize, (to - from) * PageGeometry.PageSize));
    }

    /// <summary>Page <paramref name="index"/>'s share of its block's stored bytes in this iovec (computed once per iovec, on first need).</summary>
    private int Share(ReadOnlySpan<byte> all, int index)
    {
        if (!_sharesReady)
        {
            int n = all.Length / PageGeometry.PageSize;
            if (_shares.Length < n)
                _shares = new int[Math.Max(n, _shares.Length * 2)];
            _sharesTotal = _estimator!.BlockShares(all, _shares);
            EstimatedBytes += (ulong)all.Length;
            _sharesReady = true;
        }
        return _shares[index];
    }

    private Kind Decide(ulong va, ReadOnlySpan<byte> all, int index, ulong digest, Span<byte> delta, out int deltaLen)
    {
        deltaLen = 0;
        var page = all.Slice(index * PageGeometry.PageSize, PageGeometry.PageSize);
        if (!ParentCovers(va))
            return Kind.Present;
        if (_history.Elide && _history.TryGetDigest(_pid, va, out ulong before) && before == digest)
        {
            _elided++;
            if (_estimator is not null && _history.DeltaActive)
                _saved += (ulong)Share(all, index);
            return Kind.Hole;
        }
        if (_estimator is null || !_history.DeltaActive)
            return Kind.Present;
        var old = _history.Lookup(_pid, va);
        if (old.IsEmpty)
        {
            _misses++;
            return Kind.Present;
        }
        _hits++;
        int stored = Share(all, index);
        int limit = stored - DeltaEntryCost;
        int len = limit <= 0 ? -1 : PageDelta.Encode(old, page, delta[..Math.Min(limit, PageGeometry.PageSize)]);
        if (len < 0 || len >= limit)
        {
            _overflows++;
            return Kind.Present;
        }
        deltaLen = len;
        return Kind.Delta;
    }

    /// <summary>The parent pagemap holds this page (stored, in its own parent or as a delta): the other side has a version of it.</summary>
    private bool ParentCovers(ulong va)
    {
        if (_parent is null)
            return false;
        int i = _parent.FindEntry(va);
        return i >= 0 && (PagemapImage.FlagsOf(_parent.Entries[i]) & (PagemapFlags.Present | PagemapFlags.Parent | PagemapFlags.Delta)) != 0;
    }

    public void Dispose() => _estimator?.Dispose();
}

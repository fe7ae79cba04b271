using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>
/// Decides, page by page, how a pre-dump sends a page the tracker reported written:
/// <code>
///  parent pagemap does not cover va              → written as today (no base on the other side)
///  digest == digest of the chain's version        → PE_PARENT hole          (elision)
///  chain's version in the delta cache, and
///    delta + entry cost &lt; page compressed alone  → PE_DELTA, delta in deltas-N.img
///  otherwise                                      → written as today (PE_PRESENT, compressed)
/// </code>
/// Runs of same-kind pages go to the <see cref="PagemapWriter"/> together. Each technique pays
/// for itself page by page: a page is elided only if it is identical and sent as a delta only if
/// the delta is smaller, so turning them on never stores more page bytes than leaving them off.
/// </summary>
internal sealed class PageSieve : IDisposable
{
    /// <summary>
    /// Metadata a delta page adds beyond a present page's: its size and checksum in the entry
    /// (≈ 10 B) and, when it splits a present run, a second entry (≈ 16 B). A delta must beat the
    /// compressed page by this much.
    /// </summary>
    internal const int DeltaEntryCost = 24;

    private readonly SentPages _history;
    private readonly int _pid;
    private readonly PagemapImage? _parent;
    private readonly PageSizeEstimator? _estimator;
    private readonly byte[] _delta = new byte[PageGeometry.PageSize];
    private ulong _elided, _hits, _misses, _overflows, _deltas, _deltaBytes, _saved;

    public PageSieve(SentPages history, int pid, PagemapImage? parent, PageStoreOptions store)
    {
        _history = history;
        _pid = pid;
        _parent = parent;
        if (history.Delta)
            _estimator = new PageSizeEstimator(store);
    }

    /// <summary>Raw bytes of the pages considered for deltas (each was compressed alone to decide).</summary>
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
        int runStart = 0;
        Kind runKind = Kind.Present;
        for (int i = 0; i < n; i++)
        {
            ulong a = va + ((ulong)i << PageGeometry.PageShift);
            var page = bytes.Slice(i * ps, ps);
            ulong digest = PageDigest.Of(a, page);
            var kind = Decide(a, page, digest, out int deltaLen);
            if (kind != runKind || kind == Kind.Delta)
            {
                Flush(writer, va, bytes, runStart, i, runKind, writePresent);
                runStart = i;
                runKind = kind;
            }
            if (kind == Kind.Delta)
            {
                writer.AddDelta(a, _delta.AsSpan(0, deltaLen), PageDelta.Checksum(page));
                runStart = i + 1;
                runKind = Kind.Present;
            }
            if (kind != Kind.Hole)
                _history.Sent(_pid, a, digest, page);
        }
        Flush(writer, va, bytes, runStart, n, runKind, writePresent);
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

    private Kind Decide(ulong va, ReadOnlySpan<byte> page, ulong digest, out int deltaLen)
    {
        deltaLen = 0;
        if (!ParentCovers(va))
            return Kind.Present;
        if (_history.Elide && _history.TryGetDigest(_pid, va, out ulong before) && before == digest)
        {
            _elided++;
            if (_estimator is not null)
                _saved += (ulong)_estimator.StoredSize(page);
            return Kind.Hole;
        }
        if (_estimator is null)
            return Kind.Present;
        var old = _history.Lookup(_pid, va);
        if (old.IsEmpty)
        {
            _misses++;
            return Kind.Present;
        }
        _hits++;
        EstimatedBytes += PageGeometry.PageSize;
        int stored = _estimator.StoredSize(page);
        int limit = stored - DeltaEntryCost;
        int len = limit <= 0 ? -1 : PageDelta.Encode(old, page, _delta.AsSpan(0, Math.Min(limit, _delta.Length)));
        if (len < 0 || len >= limit)
        {
            _overflows++;
            return Kind.Present;
        }
        _deltas++;
        _deltaBytes += (ulong)len;
        _saved += (ulong)(stored - len);
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

using System.Runtime.InteropServices;
using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>Counters of unchanged-page elision and delta encoding, named after QEMU's xbzrle statistics where it has them.</summary>
public sealed record DeltaCounters
{
    /// <summary>Pages the tracker reported written whose content equals the parent chain's: recorded PE_PARENT.</summary>
    public ulong PagesElided { get; init; }
    /// <summary>Re-dirtied pages found in the delta cache (QEMU: cache-hit).</summary>
    public ulong CacheHits { get; init; }
    /// <summary>Written pages that could have been deltas but were not in the cache (QEMU: cache-miss).</summary>
    public ulong CacheMisses { get; init; }
    /// <summary>Cache hits whose delta was not smaller than the page's share of its compressed block, or whose iovec's deltas together did not pay (QEMU: overflow); sent whole.</summary>
    public ulong Overflows { get; init; }
    /// <summary>Pages sent as deltas.</summary>
    public ulong PagesDelta { get; init; }
    /// <summary>Bytes of those deltas.</summary>
    public ulong DeltaBytes { get; init; }
    /// <summary>Σ (page's share of its compressed block − delta) over the delta pages, plus the shares of elided pages (as last sent).</summary>
    public ulong BytesSaved { get; init; }
    /// <summary>
    /// A history rebuilt from the parent chain (<see cref="SentPages.FromImages"/>): written pages
    /// the parent chain holds but whose digest it did not record (it was dumped without
    /// page-digests-PID.img) and whose base was not read, so elision could not be tried.
    /// </summary>
    public ulong PagesNoDigest { get; init; }
    /// <summary>Virtual time deltas cost: sizing pages up (compressing them once more) and encoding them.</summary>
    public ulong DeltaCostNs { get; init; }
    /// <summary>Virtual time deltas saved: link time of the bytes they did not send plus the compression of the pages they replaced.</summary>
    public ulong DeltaGainNs { get; init; }

    public DeltaCounters Add(DeltaCounters o) => new()
    {
        PagesElided = PagesElided + o.PagesElided,
        CacheHits = CacheHits + o.CacheHits,
        CacheMisses = CacheMisses + o.CacheMisses,
        Overflows = Overflows + o.Overflows,
        PagesDelta = PagesDelta + o.PagesDelta,
        DeltaBytes = DeltaBytes + o.DeltaBytes,
        BytesSaved = BytesSaved + o.BytesSaved,
        DeltaCostNs = DeltaCostNs + o.DeltaCostNs,
        DeltaGainNs = DeltaGainNs + o.DeltaGainNs,
        PagesNoDigest = PagesNoDigest + o.PagesNoDigest,
    };
}

/// <summary>
/// What the source has sent down one chain of image directories, kept from one pre-dump to the
/// next (the source side of a migration, as QEMU keeps its XBZRLE cache on the source):
/// <code>
///  digests:  (pid, va) → PageDigest of the version the chain holds       every page sent, 16 B each
///  cache:    (pid, va) → the 4 KiB last sent, LRU with bimodal insertion,   the bases of deltas
///            at most CacheBytes
///           slots ─ [page][page][page]…   _prev/_next: LRU list, head = most recent
/// </code>
/// It describes exactly one chain: <see cref="Head"/> is the image directory it was last brought
/// up to date with. A pre-dump whose parent is another directory (or one that failed half-way)
/// finds the history does not match and starts it afresh rather than trust it.
/// </summary>
public sealed partial class SentPages
{
    private readonly Dictionary<(int Pid, ulong Va), ulong> _digests = [];
    private readonly Dictionary<(int Pid, ulong Va), int> _slotOf = [];
    private readonly byte[] _slots;
    private readonly (int Pid, ulong Va)[] _keyOf;
    private readonly ushort[] _shares;
    private readonly int[] _prev;
    private readonly int[] _next;
    private readonly int _capacity;
    private int _used;
    private int _head = -1;
    private int _tail = -1;

    /// <param name="elide">Record unchanged written pages as PE_PARENT.</param>
    /// <param name="cacheBytes">Delta cache size (QEMU's default xbzrle-cache-size is 64 MiB); 0 = no deltas.</param>
    public SentPages(bool elide, long cacheBytes)
    {
        if (cacheBytes < 0 || cacheBytes > (1L << 40))
            throw new ArgumentOutOfRangeException(nameof(cacheBytes), cacheBytes, "delta cache size must be 0..1 TiB");
        Elide = elide;
        _capacity = (int)Math.Min(int.MaxValue / PageGeometry.PageSize, cacheBytes / PageGeometry.PageSize);
        _slots = _capacity > 0 ? GC.AllocateUninitializedArray<byte>(_capacity * PageGeometry.PageSize) : [];
        _keyOf = new (int, ulong)[_capacity];
        _shares = new ushort[_capacity];
        _prev = new int[_capacity];
        _next = new int[_capacity];
    }

    public bool Elide { get; }
    public bool Delta => _capacity > 0;
    public long CacheBytes => (long)_capacity * PageGeometry.PageSize;
    /// <summary>Full path of the image directory the history describes; null = nothing trustworthy.</summary>
    public string? Head { get; private set; }
    /// <summary>Totals over every pre-dump that used this history.</summary>
    public DeltaCounters Totals { get; private set; } = new();

    /// <summary>
    /// Called before a pre-dump writes <paramref name="imagesDir"/> on top of <paramref name="parentDir"/>:
    /// keeps the history only if it describes that parent, and marks it untrustworthy until
    /// <see cref="Commit"/>.
    /// </summary>
    internal void Begin(string? parentDir, string imagesDir)
    {
        if (parentDir is null || Head is null || !SamePath(parentDir, Head))
            Clear();
        Head = null;
        _pendingCoverage.Clear();
        ResetIteration();
        _ = imagesDir;
    }

    internal void Commit(string imagesDir, DeltaCounters counters)
    {
        Head = Path.GetFullPath(imagesDir);
        (_coverage, _pendingCoverage) = (_pendingCoverage, _coverage);
        _pendingCoverage.Clear();
        Totals = Totals.Add(counters);
        // Deltas switch themselves off for a few iterations after one where they cost more time
        // than they saved: sizing pages up compresses them once more and encoding reads them, and
        // that lengthens the iteration, so the next one finds more dirty pages. What they saved is
        // the link time of the bytes they did not send (plus the compression of the pages they
        // replaced). They are tried again afterwards, since a workload's pages change differently
        // over time.
        if (_deltaPause > 0)
            _deltaPause--;
        else if (counters.DeltaCostNs > counters.DeltaGainNs)
            _deltaPause = DeltaPauseIterations;
        ResetIteration();
        // The penalty follows the workload: older iterations count half as much each time.
        _cutBytes /= 2;
        _cutPages /= 2;
        _deltaRawBytes /= 2;
        _deltaStoredBytes /= 2;
    }

    private long _deltaRawBytes, _deltaStoredBytes;

    /// <summary>
    /// What deltas-N.img stores per encoded delta byte: learnt from the blocks the writers
    /// compressed (older iterations weighing less), 1 until a block has been stored. A delta
    /// costs its encoded length times this, which is what it has to beat its page's share by.
    /// </summary>
    internal double DeltaStoredRatio => _deltaRawBytes < MinRatioBytes ? 1.0
        : Math.Clamp((double)_deltaStoredBytes / _deltaRawBytes, MinDeltaStoredRatio, 1.0);

    /// <summary>Encoded delta bytes a learnt ratio needs behind it (one 64 KiB block).</summary>
    private const long MinRatioBytes = 64 << 10;

    /// <summary>The lowest ratio trusted (an 8× compression), so a run of unusually repetitive deltas does not admit every delta after it.</summary>
    internal const double MinDeltaStoredRatio = 0.125;

    /// <summary>Delta blocks a writer stored: <paramref name="rawBytes"/> encoded bytes in <paramref name="storedBytes"/>.</summary>
    internal void NoteDeltaBlocks(long rawBytes, long storedBytes)
    {
        _deltaRawBytes += rawBytes;
        _deltaStoredBytes += storedBytes;
    }

    private long _cutBytes;
    private long _cutPages;
    private Dictionary<int, PagemapImage> _coverage = [], _pendingCoverage = [];

    /// <summary>
    /// What a pagemap sent to a page server covered (its entries, whatever their kind): the
    /// server's copy is the next dump's parent, which the source cannot read. Without it a
    /// written page whose address held another mapping's page earlier in the chain could be
    /// elided against a digest the server's parent no longer covers.
    /// </summary>
    internal void NoteCoverage(int pid, IReadOnlyList<(ulong Va, ulong Pages)> ranges) =>
        _pendingCoverage[pid] = PagemapImage.Coverage($"pagemap-{pid}.img as sent to the page server", ranges);

    /// <summary>The coverage of the parent's pagemap of <paramref name="pid"/> as sent to a page server, if this history holds it.</summary>
    internal PagemapImage? CoverageOf(int pid) => _coverage.GetValueOrDefault(pid);

    /// <summary>
    /// Bytes a delta page has cost, on average, in the present runs it cut (they compress worse in
    /// pieces than whole: the pages around a delta lose its matches); learnt from what the writer
    /// stored, older iterations weighing less. A delta has to beat its page's share by this much more.
    /// </summary>
    internal int CutPenalty => _cutPages <= 0 ? 0 : (int)Math.Clamp(_cutBytes / _cutPages, 0, PageGeometry.PageSize);

    /// <summary>An iovec with <paramref name="deltaPages"/> deltas stored <paramref name="growthBytes"/> more in its present pages than their previous shares.</summary>
    internal void NoteCuts(long growthBytes, int deltaPages)
    {
        _cutBytes += growthBytes;
        _cutPages += deltaPages;
    }

    /// <summary>Iterations without delta attempts after one where they did not pay.</summary>
    internal const int DeltaPauseIterations = 3;

    /// <summary>
    /// Time deltas may cost within one iteration beyond what they have saved since the last probe
    /// began before they stop for a while: the link time of about 27 KB at 128 MiB/s, or the
    /// encoding of 340 pages at 7 GB/s — a probe that tells whether the pages at hand pay.
    /// </summary>
    internal const ulong DeltaProbeNs = 200_000;

    /// <summary>The longest back-off within an iteration, in windows of pages sent whole (see <see cref="Account"/>).</summary>
    internal const int MaxBackoffWindows = 64;

    private int _deltaPause;
    private ulong _iterationCostNs, _iterationGainNs;
    private int _skipWindows, _backoff = 1;

    /// <summary>Pages are tried as deltas now: deltas are on, did not just fail to pay for an iteration, and are not backing off within this one.</summary>
    internal bool DeltaActive => Delta && _deltaPause == 0 && _skipWindows == 0;

    /// <summary>
    /// Adds what deltas cost and saved (virtual ns) in one window of pages. Once the cost since
    /// the probe began exceeds the gain by more than <see cref="DeltaProbeNs"/>, the next windows
    /// (1, then 2, 4, … up to <see cref="MaxBackoffWindows"/>) go whole and a new probe begins
    /// after them: a region of memory where deltas do not pay costs little, and a later region
    /// where they do still gets them. A window that pays resets the back-off.
    /// </summary>
    internal void Account(ulong costNs, ulong gainNs)
    {
        _iterationCostNs += costNs;
        _iterationGainNs += gainNs;
        if (gainNs > costNs)
            _backoff = 1;
        if (_iterationCostNs > _iterationGainNs + DeltaProbeNs)
        {
            _skipWindows = _backoff;
            _backoff = Math.Min(_backoff * 2, MaxBackoffWindows);
            _iterationCostNs = _iterationGainNs = 0;
        }
    }

    /// <summary>One window of pages was sent (the back-off counts windows).</summary>
    internal void WindowDone()
    {
        if (_skipWindows > 0)
            _skipWindows--;
    }

    private void ResetIteration()
    {
        _iterationCostNs = _iterationGainNs = 0;
        _skipWindows = 0;
        _backoff = 1;
    }

    private static bool SamePath(string a, string b) =>
        string.Equals(Path.GetFullPath(a).TrimEnd('/'), Path.GetFullPath(b).TrimEnd('/'), StringComparison.Ordinal);

    private void Clear()
    {
        _deltaPause = 0;
        _cutBytes = _cutPages = 0;
        _deltaRawBytes = _deltaStoredBytes = 0;
        _insertions = 0;
        _meanShare = 0;
        _meanCount = 0;
        ResetIteration();
        _coverage.Clear();
        ClearPages();
    }

    /// <summary>Forgets the digests and cached pages only; what was learnt about deltas (ratio, cut penalty, back-off) stays.</summary>
    private void ClearPages()
    {
        _digests.Clear();
        _slotOf.Clear();
        _free.Clear();
        _used = 0;
        _head = _tail = -1;
    }

    internal bool TryGetDigest(int pid, ulong va, out ulong digest) => _digests.TryGetValue((pid, va), out digest);

    /// <summary>
    /// The cached last-sent version, made most recent; empty if not cached. <paramref name="share"/>
    /// is what that version cost when it was sent: its share of its compressed block (or, sent as
    /// a delta, the share it replaced) — a page changes its compressibility slowly, so this tells
    /// cheaply whether a delta can pay before the page is sized up again.
    /// </summary>
    internal ReadOnlySpan<byte> Lookup(int pid, ulong va, out int share)
    {
        share = 0;
        if (!_slotOf.TryGetValue((pid, va), out int s))
            return [];
        Touch(s);
        share = _shares[s];
        return _slots.AsSpan(s * PageGeometry.PageSize, PageGeometry.PageSize);
    }

    /// <summary>The cached version's share (see <see cref="Lookup"/>) without making it recent; -1 if not cached.</summary>
    internal int ShareOf(int pid, ulong va) => _slotOf.TryGetValue((pid, va), out int s) ? _shares[s] : -1;

    /// <summary>
    /// Records what the chain now holds for (pid, va): its digest and, with deltas on, its bytes
    /// (evicting the least recent) and what it cost to send (<paramref name="share"/>, see <see cref="Lookup"/>).
    /// </summary>
    internal void Sent(int pid, ulong va, ulong digest, ReadOnlySpan<byte> page, int share)
    {
        var key = (pid, va);
        _digests[key] = digest;
        // Rebuilt from images, the history ends with this run: bases seeded for pages still to
        // be written must not make room for versions nothing will read.
        if (_capacity == 0 || FromChain)
            return;
        if (share <= PageSieve.DeltaEntryCost)
        {
            // No delta can beat what this version cost (its entry alone costs more), so the next
            // write of the page goes whole whether or not it is cached: keeping it would only
            // evict a page whose delta could pay. An older version must not stay either.
            Forget(key);
            return;
        }
        ref int slot = ref CollectionsMarshal.GetValueRefOrAddDefault(_slotOf, key, out bool exists);
        if (!exists)
        {
            bool front = true;
            if (_free.Count > 0)
                slot = _free.Pop();
            else if (_used < _capacity)
                slot = _used++;
            else
            {
                int victim = _tail;
                Unlink(victim);
                _slotOf.Remove(_keyOf[victim]);
                // The dictionary may have moved the entry: look it up again.
                slot = ref CollectionsMarshal.GetValueRefOrAddDefault(_slotOf, key, out _);
                slot = victim;
                // A full cache takes a new page in at the least recent end: a pre-dump walks
                // memory in address order, so with plain LRU a dirty set larger than the cache
                // evicts every page just before it is re-dirtied and no page ever hits. A page
                // enters at the most recent end when a hit on it is worth more than an average
                // cached page's (its share, what its delta can save, is above their mean), and one
                // in BimodalInsert whatever its worth, so a changing working set still gets in
                // (bimodal insertion, Qureshi et al., ISCA 2007, weighted by the saving a hit brings).
                front = share > _meanShare || ++_insertions % BimodalInsert == 0;
            }
            _keyOf[slot] = key;
            if (front)
                PushFront(slot);
            else
                PushBack(slot);
        }
        else
            Touch(slot);
        // The mean share of what the cache takes in, over about the last MeanWindow pages.
        _meanShare += (share - _meanShare) / Math.Min(++_meanCount, MeanWindow);
        page.CopyTo(_slots.AsSpan(slot * PageGeometry.PageSize, PageGeometry.PageSize));
        _shares[slot] = (ushort)Math.Clamp(share, 0, ushort.MaxValue);
    }

    private readonly Stack<int> _free = new();

    private void Forget((int Pid, ulong Va) key)
    {
        if (!_slotOf.Remove(key, out int s))
            return;
        Unlink(s);
        _free.Push(s);
    }

    private void Touch(int s)
    {
        if (_head == s)
            return;
        Unlink(s);
        PushFront(s);
    }

    private void Unlink(int s)
    {
        int p = _prev[s], n = _next[s];
        if (p >= 0) _next[p] = n; else _head = n;
        if (n >= 0) _prev[n] = p; else _tail = p;
    }

    /// <summary>One new page in this many enters a full cache as most recent whatever its share (see <see cref="Sent"/>).</summary>
    internal const int BimodalInsert = 16;

    /// <summary>Pages the mean share of cached pages is taken over (an exponential average once warm).</summary>
    private const int MeanWindow = 1024;

    private double _meanShare;
    private long _meanCount;

    private ulong _insertions;

    private void PushBack(int s)
    {
        _next[s] = -1;
        _prev[s] = _tail;
        if (_tail >= 0) _next[_tail] = s;
        _tail = s;
        if (_head < 0) _head = s;
    }

    private void PushFront(int s)
    {
        _prev[s] = -1;
        _next[s] = _head;
        if (_head >= 0) _prev[_head] = s;
        _head = s;
        if (_tail < 0) _tail = s;
    }
}

using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>
/// Decides, page by page, how a pre-dump sends a page the tracker reported written:
/// <code>
///  parent pagemap does not cover va              → written as today (no base on the other side)
///  digest == digest of the chain's version        → PE_PARENT hole          (elision)
///  chain's version in the delta cache, and
///    delta + entry cost + cut penalty &lt; what the
///    cached version cost when it was sent (its
///    share of its compressed block)               → PE_DELTA, delta in deltas-N.img
///  otherwise                                      → written as today (PE_PRESENT, compressed)
/// </code>
/// Runs of same-kind pages go to the <see cref="IPageSink"/> (local images or a page server) together.
/// <para>
/// Each technique pays for itself. Elision costs a digest compare the dump makes anyway and is
/// never switched off. A delta is taken only if it beats the page's share of its compressed
/// block as the page was last sent: the share comes from the block sizes the writer recorded
/// then, so deciding costs one delta encoding and no compression (sizing every candidate's block
/// again cost more time than the bytes it saved were worth on the link, and a longer iteration
/// lets the workload dirty more pages for the next one). What deltas then cost (encoding) and
/// save (the link time of the bytes not sent, less what the present runs they cut stored beyond
/// their pages' previous shares, plus the compression of the pages they replace) is accounted in
/// virtual time; what cut runs stored beyond their shares, per delta, is learnt as a penalty each
/// later delta has to beat (<see cref="SentPages.CutPenalty"/>). Within an iteration, once deltas
/// cost more than they saved by a small probe, the next windows of pages go whole (1, 2, 4, …
/// windows, then deltas are probed again); after an iteration where they did not pay they are
/// not tried for a few iterations (<see cref="SentPages.DeltaActive"/>).
/// </para>
/// </summary>
internal sealed class PageSieve
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
    private readonly DeltaCostRates _rates;
    private byte[] _deltaBuf = [];
    private Kind[] _kinds = [];
    private int[] _deltaAt = [0];
    private ulong[] _digests = [];
    /// <summary>Per page of the iovec: its share as last sent (-1: not known), then what it costs as sent now.</summary>
    private int[] _before = [], _sentShares = [];
    private bool[] _encoded = [], _sampled = [];
    private bool _sinkDeltas;
    private ulong _elided, _hits, _misses, _overflows, _deltas, _deltaBytes, _saved, _costNs, _gainNs;

    public PageSieve(SentPages history, int pid, PagemapImage? parent, DeltaCostRates rates)
    {
        _history = history;
        _pid = pid;
        _parent = parent;
        _rates = rates;
    }

    /// <summary>Raw bytes of the pages encoded as deltas against their cached versions (each attempt counts the whole page).</summary>
    public ulong EncodedBytes { get; private set; }

    /// <summary>Bytes the sampled pre-check read (a 64-byte cache line per sampled word, both versions).</summary>
    public ulong SampledBytes { get; private set; }

    public DeltaCounters Counters => new()
    {
        PagesElided = _elided, CacheHits = _hits, CacheMisses = _misses, Overflows = _overflows,
        PagesDelta = _deltas, DeltaBytes = _deltaBytes, BytesSaved = _saved, DeltaCostNs = _costNs, DeltaGainNs = _gainNs,
    };

    private enum Kind : byte { Present, Hole, Delta }

    /// <summary>Writes one iovec of copied pages; <paramref name="writePresent"/> takes runs that go out whole.</summary>
    public void Write(IPageSink writer, ulong va, ReadOnlySpan<byte> bytes, Action<ulong, ReadOnlySpan<byte>> writePresent)
    {
        // Local images take delta pages; a page server only once it announced them (a client
        // without deltas never asks, and sends it elision only).
        _sinkDeltas = writer.TakesDeltas;
        const int ps = PageGeometry.PageSize;
        int n = bytes.Length / ps;
        if (_kinds.Length < n)
        {
            int size = Math.Max(n, _kinds.Length * 2);
            _kinds = new Kind[size];
            _deltaAt = new int[size + 1];
            _digests = new ulong[size];
            _before = new int[size];
            _sentShares = new int[size];
            _encoded = new bool[size];
            _sampled = new bool[size];
        }
        if (_deltaBuf.Length < n * ps)
            _deltaBuf = new byte[Math.Max(n * ps, _deltaBuf.Length * 2)];
        _deltaAt[0] = 0;

        // Decided and written window by window: what the deltas of a window saved, once the runs
        // they cut are stored, decides how the next windows are treated (the cut penalty learnt,
        // the iteration's balance). A window holds whole blocks, so a run is cut at its edge only
        // after a window that had deltas.
        int window = WindowBlocks * Math.Max(1, writer.BlockPages);
        int runStart = 0;
        Kind runKind = Kind.Present;
        for (int w0 = 0; w0 < n; w0 += window)
        {
            int w1 = Math.Min(n, w0 + window);
            long saved = 0;
            int windowDeltas = 0, encoded = 0, sampled = 0, windowDeltaBytes = 0;
            // One ratio per window: what deltas-N.img's blocks stored per encoded byte so far.
            double ratio = _history.DeltaStoredRatio;
            for (int i = w0; i < w1; i++)
            {
                ulong a = va + ((ulong)i << PageGeometry.PageShift);
                _digests[i] = PageDigest.Of(a, bytes.Slice(i * ps, ps));
                _before[i] = -1;
                _encoded[i] = _sampled[i] = false;
                _kinds[i] = Decide(a, bytes.Slice(i * ps, ps), i, _digests[i], _deltaBuf.AsSpan(_deltaAt[i]), ratio, out int deltaLen);
                _deltaAt[i + 1] = _deltaAt[i] + deltaLen;
                if (_encoded[i])
                    encoded++;
                if (_sampled[i])
                    sampled++;
                if (_kinds[i] == Kind.Delta)
                    windowDeltas++;
            }
            int measureFrom = Math.Min(runStart, w0);
            for (int i = w0; i < w1; i++)
            {
                ulong a = va + ((ulong)i << PageGeometry.PageShift);
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
                    writer.AddDelta(a, _deltaBuf.AsSpan(_deltaAt[i], len), PageDelta.Checksum(bytes.Slice(i * ps, ps)));
                    _deltas++;
                    _deltaBytes += (ulong)len;
                    windowDeltaBytes += len;
                    int stored = StoredDeltaBytes(len, ratio);
                    _saved += (ulong)Math.Max(0, _before[i] - stored);
                    saved += _before[i] - stored - DeltaEntryCost;
                    // What the page would have cost stored: a later delta has to beat it again.
                    _sentShares[i] = _before[i];
                    runStart = i + 1;
                    runKind = Kind.Present;
                }
            }
            if (windowDeltas > 0)
            {
                Flush(writer, va, bytes, runStart, w1, runKind, writePresent);
                runStart = w1;
                runKind = Kind.Present;
                // Cutting runs for deltas costs their pieces compression (each is compressed in
                // blocks of its own, without the matches the delta pages gave it): what the present
                // pages stored beyond their previous shares is charged against what the deltas
                // saved, and learnt as a penalty later deltas have to beat too.
                long growth = 0;
                for (int i = measureFrom; i < w1; i++)
                    if (_kinds[i] == Kind.Present && _before[i] >= 0)
                        growth += _sentShares[i] - _before[i];
                saved -= growth;
                _history.NoteCuts(growth, windowDeltas);
            }
            if (_history.Delta)
            {
                _history.WindowDone();
                _history.NoteDeltaBlocks(writer.DeltaBlocksRawBytes - _blocksRawSeen, writer.DeltaBlocksStoredBytes - _blocksStoredSeen);
                _blocksRawSeen = writer.DeltaBlocksRawBytes;
                _blocksStoredSeen = writer.DeltaBlocksStoredBytes;
            }
            if (sampled == 0 && windowDeltas == 0)
                continue;
            // Compressing the deltas' blocks costs as compressing pages does, per byte.
            ulong cost = (ulong)((encoded * ps + sampled * SampleWords * 2 * 64) * _rates.EncodeNsPerByte
                + (ratio < 1 ? windowDeltaBytes * _rates.SizeNsPerByte : 0)
                + (saved < 0 ? -saved * _rates.LinkNsPerByte : 0));
            ulong gain = saved <= 0 ? 0 : (ulong)(saved * _rates.LinkNsPerByte + (double)windowDeltas * ps * _rates.SizeNsPerByte);
            _costNs += cost;
            _gainNs += gain;
            _history.Account(cost, gain);
        }
        Flush(writer, va, bytes, runStart, n, runKind, writePresent);
        for (int i = 0; i < n; i++)
        {
            if (_kinds[i] != Kind.Hole)
                _history.Sent(_pid, va + ((ulong)i << PageGeometry.PageShift), _digests[i], bytes.Slice(i * ps, ps), _sentShares[i]);
            Recorded?.Add(va + ((ulong)i << PageGeometry.PageShift), _digests[i]);
        }
    }

    /// <summary>Blocks per window of an iovec after which deltas are re-weighed (4 blocks: 256 KiB with 64 KiB blocks).</summary>
    internal const int WindowBlocks = 4;

    private void Flush(IPageSink writer, ulong va, ReadOnlySpan<byte> bytes, int from, int to, Kind kind,
        Action<ulong, ReadOnlySpan<byte>> writePresent)
    {
        if (to <= from)
            return;
        ulong a = va + ((ulong)from << PageGeometry.PageShift);
        if (kind == Kind.Hole)
            writer.AddParentHole(a, (ulong)(to - from));
        else if (kind == Kind.Present)
        {
            writePresent(a, bytes.Slice(from * PageGeometry.PageSize, (to - from) * PageGeometry.PageSize));
            if (_history.Delta)
                writer.LastRunShares(_sentShares.AsSpan(from, to - from));
        }
    }

    /// <summary>What a delta of <paramref name="len"/> encoded bytes is expected to store in deltas-N.img.</summary>
    private static int StoredDeltaBytes(int len, double ratio) => (int)Math.Ceiling(len * ratio);

    private long _blocksRawSeen, _blocksStoredSeen;

    private Kind Decide(ulong va, ReadOnlySpan<byte> page, int index, ulong digest, Span<byte> delta, double ratio, out int deltaLen)
    {
        deltaLen = 0;
        if (!ParentCovers(va))
            return Kind.Present;
        if (_history.Elide && _history.TryGetDigest(_pid, va, out ulong before) && before == digest)
        {
            _elided++;
            // What the page cost when it was last sent, when that is known (it is cached).
            if (_history.Delta)
                _saved += (ulong)Math.Max(0, _history.ShareOf(_pid, va));
            return Kind.Hole;
        }
        if (!_history.Delta || !_sinkDeltas)
            return Kind.Present;
        // Known for every cached page, whether or not deltas are tried: the present runs of an
        // iovec with deltas are charged what they store beyond it.
        _before[index] = _history.ShareOf(_pid, va);
        if (!_history.DeltaActive)
            return Kind.Present;
        var old = _history.Lookup(_pid, va, out int lastShare);
        if (old.IsEmpty)
        {
            _misses++;
            return Kind.Present;
        }
        _hits++;
        int limit = lastShare - DeltaEntryCost - _history.CutPenalty;
        if (limit <= 0)
        {
            _overflows++;
            return Kind.Present;
        }
        // The limit in encoded bytes: deltas-N.img compresses the deltas in blocks, so a delta
        // stores about its length times the ratio its blocks have been stored at.
        int encodedLimit = (int)Math.Min(PageGeometry.PageSize, limit / ratio);
        // Cheaper still: a word in every 256 bytes of the two versions. Where most sampled words
        // changed, the delta would be about as large as the page: skip encoding it.
        SampledBytes += SampleWords * 2 * 64;
        _sampled[index] = true;
        if (ChangedSampleWords(old, page) * (PageGeometry.PageSize / SampleWords) >= 2 * encodedLimit)
        {
            _overflows++;
            return Kind.Present;
        }
        EncodedBytes += PageGeometry.PageSize;
        _encoded[index] = true;
        int len = PageDelta.Encode(old, page, delta[..encodedLimit]);
        if (len < 0 || StoredDeltaBytes(len, ratio) >= limit)
        {
            _overflows++;
            return Kind.Present;
        }
        deltaLen = len;
        return Kind.Delta;
    }

    /// <summary>Words compared by the pre-check before encoding: one in every 256 bytes of a 4 KiB page.</summary>
    internal const int SampleWords = 16;

    /// <summary>How many of <see cref="SampleWords"/> evenly spaced 8-byte words differ between the two versions.</summary>
    private static int ChangedSampleWords(ReadOnlySpan<byte> old, ReadOnlySpan<byte> now)
    {
        var a = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(old);
        var b = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(now);
        int stride = a.Length / SampleWords, changed = 0;
        for (int w = 0; w < a.Length; w += stride)
            if (a[w] != b[w])
                changed++;
        return changed;
    }

    /// <summary>The parent pagemap holds this page (stored, in its own parent or as a delta): the other side has a version of it.</summary>
    private bool ParentCovers(ulong va) => Covers(_parent, va);

    internal static bool Covers(PagemapImage? parent, ulong va)
    {
        if (parent is null)
            return false;
        int i = parent.FindEntry(va);
        return i >= 0 && (PagemapImage.FlagsOf(parent.Entries[i]) & (PagemapFlags.Present | PagemapFlags.Parent | PagemapFlags.Delta)) != 0;
    }

    /// <summary>
    /// Digests of every page this pagemap covers, in address order, for page-digests-PID.img (a
    /// history rebuilt from images: the next dump elides against them); null = not kept.
    /// </summary>
    public PageDigestMap? Recorded { get; init; }

    /// <summary>The parent's digests, for the pages the collector left in the parent (<see cref="Hole"/>).</summary>
    public PageDigestMap? ParentDigests { get; init; }

    /// <summary>
    /// A run the collector left in the parent (clean pages): <see cref="Recorded"/> takes the
    /// parent's digests of it where the parent has them (a page without one stays unrecorded, so
    /// the next dump sends it rather than trust a guess).
    /// </summary>
    public void Hole(ulong va, ulong pages)
    {
        if (Recorded is not { } rec || ParentDigests is not { } parent)
            return;
        for (ulong i = 0; i < pages; i++)
        {
            ulong a = va + (i << PageGeometry.PageShift);
            if (parent.TryGet(a, out ulong d))
                rec.Add(a, d);
        }
    }
}

/// <summary>Virtual nanoseconds per byte of what deltas cost (encoding) and save (link time, compression of the pages they replace), from the <see cref="CostModel"/>.</summary>
internal readonly record struct DeltaCostRates(double SizeNsPerByte, double EncodeNsPerByte, double LinkNsPerByte);

using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>
/// Where one pagemap's entries and pages go: CRIU's <c>struct page_xfer</c> with its two
/// back-ends (criu/page-xfer.c), local images or a page server, which the dump path cannot tell
/// apart. Entries come in ascending address order; bytes are consumed before a call returns,
/// except pages given by reference, which stay readable until <see cref="Finish"/>.
/// <code>
///  PageXfer ──▶ IPageSink ─┬─ LocalPageSink:      PagemapWriter ──▶ pagemap-ID.img + pages-N.img
///                          └─ PageServerSink:     ADD_F headers + raw pages ──▶ TCP ──▶ page server
/// </code>
/// </summary>
internal interface IPageSink : IDisposable
{
    /// <summary>Called with (vaddr, digest) for every non-zero page stored, in address order; set before the first page.</summary>
    Action<ulong, ulong>? OnPageDigest { get; set; }

    void AddPresent(ulong vaddr, ReadOnlySpan<byte> pages);
    void AddPresentByReference(ulong vaddr, ReadOnlySpan<nint> pageAddresses);
    /// <summary>Pages read by <paramref name="fetch"/> where they are stored (see <see cref="PagemapWriter.AddPresentByFetch"/>); readable until <see cref="Finish"/>.</summary>
    void AddPresentByFetch(ulong vaddr, int nrPages, PageFetch fetch);
    void AddParentHole(ulong vaddr, ulong nrPages);
    PageWriteStats Finish();

    /// <summary>PE_DELTA pages can be stored (<see cref="AddDelta"/>): local images, or a page server that announced them.</summary>
    bool TakesDeltas => false;

    /// <summary>One page as a delta against the same page in the parent chain (see <see cref="PagemapWriter.AddDelta"/>).</summary>
    void AddDelta(ulong vaddr, ReadOnlySpan<byte> delta, ulong newPageChecksum) =>
        throw new NotSupportedException("this page sink stores no delta pages");

    /// <summary>Pages per block of the stored (or sent) runs; 1 where pages go one by one.</summary>
    int BlockPages => 1;

    /// <summary>Encoded delta bytes stored (or sent) so far; with <see cref="DeltaBlocksStoredBytes"/> the ratio a delta costs per encoded byte.</summary>
    long DeltaBlocksRawBytes => 0;

    /// <summary>What those delta bytes took where they went (compressed blocks of deltas-N.img locally; as encoded on a page server's wire).</summary>
    long DeltaBlocksStoredBytes => 0;

    /// <summary>
    /// What each page of the run just given to <see cref="AddPresent"/> cost stored (or sent): its
    /// share of its block, a block's bytes split evenly over its non-zero pages.
    /// </summary>
    void LastRunShares(Span<int> shares) => shares.Fill(PageGeometry.PageSize);
}

/// <summary>The local back-end: an images-directory <see cref="PagemapWriter"/>.</summary>
internal sealed class LocalPageSink(PagemapWriter writer) : IPageSink
{
    /// <summary>The writer itself, for what only local images can hold (PE_DELTA pages).</summary>
    public PagemapWriter Writer => writer;

    public Action<ulong, ulong>? OnPageDigest
    {
        get => writer.OnPageDigest;
        set => writer.OnPageDigest = value;
    }

    public void AddPresent(ulong vaddr, ReadOnlySpan<byte> pages) => writer.AddPresent(vaddr, pages);
    public void AddPresentByReference(ulong vaddr, ReadOnlySpan<nint> pageAddresses) => writer.AddPresentByReference(vaddr, pageAddresses);
    public void AddPresentByFetch(ulong vaddr, int nrPages, PageFetch fetch) => writer.AddPresentByFetch(vaddr, nrPages, fetch);
    public void AddParentHole(ulong vaddr, ulong nrPages) => writer.AddParentHole(vaddr, nrPages);
    public PageWriteStats Finish() => writer.Finish();
    public void Dispose() => writer.Dispose();

    public bool TakesDeltas => true;
    public void AddDelta(ulong vaddr, ReadOnlySpan<byte> delta, ulong newPageChecksum) => writer.AddDelta(vaddr, delta, newPageChecksum);
    public int BlockPages => Math.Max(1, writer.Options.BlockPages);
    public long DeltaBlocksRawBytes => writer.DeltaBlocksRawBytes;
    public long DeltaBlocksStoredBytes => writer.DeltaBlocksStoredBytes;

    /// <summary>From the entry the writer just added: its block sizes and zero-page bits; nothing is compressed again.</summary>
    public void LastRunShares(Span<int> shares)
    {
        var e = writer.Entries[^1];
        int count = shares.Length;
        if (e.BlockSizes.Count == 0)
        {
            // Stored raw: every page costs its size.
            shares.Fill(PageGeometry.PageSize);
            return;
        }
        int bp = BlockPages;
        var zero = e.ZeroPages.Span;
        for (int b = 0, first = 0; first < count; b++, first += bp)
        {
            int pages = Math.Min(bp, count - first), nonZero = 0;
            for (int p = first; p < first + pages; p++)
                if (!IsZero(zero, p))
                    nonZero++;
            int size = b < e.BlockSizes.Count ? (int)e.BlockSizes[b] : 0;
            int share = nonZero == 0 ? 0 : (size + nonZero - 1) / nonZero;
            for (int p = first; p < first + pages; p++)
                shares[p] = IsZero(zero, p) ? 0 : share;
        }
    }

    private static bool IsZero(ReadOnlySpan<byte> bits, int page) => (page >> 3) < bits.Length && (bits[page >> 3] & (1 << (page & 7))) != 0;
}

/// <summary>
/// The page-server back-end of one pagemap: OPEN2 is sent with the first entry (or at
/// <see cref="Finish"/> for a pagemap without entries), so pagemaps whose entries a transfer
/// thread sends in order never interleave on the one connection. Pages travel raw, as CRIU sends
/// them, or as compressed blocks (<see cref="PageServerBlocks"/>) when asked; the server stores
/// them in its own page format.
/// </summary>
internal sealed class PageServerSink(PageServerClient client, PageServerImageType type, ulong id) : IPageSink
{
    private readonly ulong _dst = PageServerIov.EncodeDst(type, id);
    private readonly PageWriteStats _stats = new();
    private bool _opened;
    private bool _finished;
    // Delta pages waiting to go out as one ADD_DELTA: consecutive pages, records and deltas.
    private ulong _deltaVa;
    private int _deltaPages;
    private readonly System.Buffers.ArrayBufferWriter<byte> _deltaRecords = new();
    private readonly System.Buffers.ArrayBufferWriter<byte> _deltaBytes = new();
    // The wire size and non-zero pages of each block of the last run sent, and which of its
    // pages were zero (for LastRunShares).
    private readonly List<(int Size, int NonZero)> _lastBlocks = [];
    private readonly List<bool> _lastZero = [];

    public Action<ulong, ulong>? OnPageDigest { get; set; }

    public bool TakesDeltas => client.DeltaPages;
    public int BlockPages => client.Encoder?.BlockPages ?? 1;
    // ADD_DELTA carries the deltas as encoded (the server compresses them into its deltas-N.img):
    // on the wire a delta costs its length.
    public long DeltaBlocksRawBytes => _deltaBytesSent;
    public long DeltaBlocksStoredBytes => _deltaBytesSent;
    private long _deltaBytesSent;

    /// <summary>The ranges this pagemap's entries covered on the server, ascending and merged.</summary>
    public IReadOnlyList<(ulong Va, ulong Pages)> Covered => _covered;

    private readonly List<(ulong Va, ulong Pages)> _covered = [];

    private void Cover(ulong vaddr, ulong nr)
    {
        if (_covered.Count > 0 && _covered[^1].Va + (_covered[^1].Pages << PageGeometry.PageShift) == vaddr)
            _covered[^1] = (_covered[^1].Va, _covered[^1].Pages + nr);
        else
            _covered.Add((vaddr, nr));
    }

    public void AddDelta(ulong vaddr, ReadOnlySpan<byte> delta, ulong newPageChecksum)
    {
        if (!client.DeltaPages)
            throw new InvalidOperationException("the page server did not announce delta pages");
        if (_deltaPages > 0 && (vaddr != _deltaVa + ((ulong)_deltaPages << PageGeometry.PageShift) || _deltaPages == PageServerDeltas.MaxPages))
            FlushDeltas();
        if (_deltaPages == 0)
            _deltaVa = vaddr;
        PageServerDeltas.WriteRecord(_deltaRecords.GetSpan(PageServerDeltas.RecordBytes), (uint)delta.Length, newPageChecksum);
        _deltaRecords.Advance(PageServerDeltas.RecordBytes);
        System.Buffers.BuffersExtensions.Write(_deltaBytes, delta);
        _deltaPages++;
    }

    private void FlushDeltas()
    {
        if (_deltaPages == 0)
            return;
        EnsureOpen();
        long before = client.PageBytesSent;
        client.AddDeltas(_deltaVa, _deltaPages, _dst, _deltaRecords.WrittenSpan, _deltaBytes.WrittenSpan);
        _deltaBytesSent += _deltaBytes.WrittenCount;
        Cover(_deltaVa, (ulong)_deltaPages);
        _stats.AddDeltasTransferred((ulong)_deltaPages, (ulong)(client.PageBytesSent - before));
        _deltaPages = 0;
        _deltaRecords.Clear();
        _deltaBytes.Clear();
    }

    public void LastRunShares(Span<int> shares)
    {
        if (_lastBlocks.Count == 0)
        {
            shares.Fill(PageGeometry.PageSize);
            return;
        }
        // As a local store counts them: a block's bytes split over its non-zero pages (zero
        // pages compress to next to nothing, so they cost 0).
        int bp = BlockPages;
        for (int b = 0, first = 0; first < shares.Length; b++, first += bp)
        {
            int pages = Math.Min(bp, shares.Length - first);
            var (size, nonZero) = b < _lastBlocks.Count ? _lastBlocks[b] : (0, 0);
            int share = nonZero == 0 ? 0 : (size + nonZero - 1) / nonZero;
            for (int p = first; p < first + pages; p++)
                shares[p] = p < _lastZero.Count && _lastZero[p] ? 0 : share;
        }
    }

    public void AddPresent(ulong vaddr, ReadOnlySpan<byte> pages)
    {
        ulong nr = (ulong)pages.Length >> PageGeometry.PageShift;
        Begin(PagemapFlags.Present, vaddr, nr);
        long before = client.PageBytesSent;
        _lastBlocks.Clear();
        _lastZero.Clear();
        if (client.Encoder is { } enc)
        {
            SendPreamble(enc);
            int blockBytes = enc.BlockPages << PageGeometry.PageShift;
            for (int off = 0; off < pages.Length; off += blockBytes)
            {
                var plain = pages.Slice(off, Math.Min(blockBytes, pages.Length - off));
                var block = enc.EncodeBlock(plain);
                int nonZero = 0;
                for (int p = 0; p < plain.Length; p += PageGeometry.PageSize)
                {
                    bool zero = !plain.Slice(p, PageGeometry.PageSize).ContainsAnyExcept((byte)0);
                    _lastZero.Add(zero);
                    if (!zero)
                        nonZero++;
                }
                _lastBlocks.Add((block.Length, nonZero));
                client.SendPages(block);
            }
        }
        else
        {
            client.SendPages(pages);
        }
        Digest(vaddr, pages);
        _stats.AddTransferred(nr, 0, (ulong)(client.PageBytesSent - before));
    }

    public unsafe void AddPresentByReference(ulong vaddr, ReadOnlySpan<nint> pageAddresses)
    {
        ulong nr = (ulong)pageAddresses.Length;
        Begin(PagemapFlags.Present, vaddr, nr);
        long before = client.PageBytesSent;
        var enc = client.Encoder;
        if (enc is not null)
            SendPreamble(enc);
        int staged = 0;
        for (int i = 0; i < pageAddresses.Length; i++)
        {
            var page = new ReadOnlySpan<byte>((byte*)pageAddresses[i], PageGeometry.PageSize);
            Digest(vaddr + ((ulong)i << PageGeometry.PageShift), page);
            if (enc is null)
            {
                client.SendPages(page);
                continue;
            }
            page.CopyTo(enc.Stage[(staged << PageGeometry.PageShift)..]);
            if (++staged == enc.BlockPages || i == pageAddresses.Length - 1)
            {
                client.SendPages(enc.EncodeBlock(enc.Stage[..(staged << PageGeometry.PageShift)]));
                staged = 0;
            }
        }
        _stats.AddTransferred(nr, 0, (ulong)(client.PageBytesSent - before));
    }

    /// <summary>The pages go out on this thread as one ADD_F entry, read into a buffer first.</summary>
    public void AddPresentByFetch(ulong vaddr, int nrPages, PageFetch fetch)
    {
        var buf = GC.AllocateUninitializedArray<byte>(nrPages << PageGeometry.PageShift);
        fetch(vaddr, buf);
        AddPresent(vaddr, buf);
    }

    private void SendPreamble(PageServerBlocks.Encoder enc)
    {
        Span<byte> pre = stackalloc byte[4];
        System.Runtime.InteropServices.MemoryMarshal.Write(pre, enc.Preamble);
        client.SendPages(pre);
    }

    public void AddParentHole(ulong vaddr, ulong nrPages)
    {
        Begin(PagemapFlags.Parent, vaddr, nrPages);
        _stats.AddTransferred(0, nrPages, 0);
    }

    private void Begin(PagemapFlags flags, ulong vaddr, ulong nr)
    {
        if (_finished)
            throw new InvalidOperationException("the pagemap is already finished");
        FlushDeltas();
        EnsureOpen();
        Cover(vaddr, nr);
        if (client.Encoder is not null && flags == PagemapFlags.Present)
            flags |= (PagemapFlags)PageServerBlocks.Flag;
        client.AddF(flags, vaddr, nr, _dst);
    }

    private void EnsureOpen()
    {
        if (_opened)
            return;
        client.Open(type, id);
        _opened = true;
    }

    private void Digest(ulong vaddr, ReadOnlySpan<byte> pages)
    {
        if (OnPageDigest is not { } report)
            return;
        for (int off = 0; off < pages.Length; off += PageGeometry.PageSize)
        {
            ulong d = PageDigest.Of(vaddr + (ulong)off, pages.Slice(off, PageGeometry.PageSize));
            if (d != 0)
                report(vaddr + (ulong)off, d);
        }
    }

    public PageWriteStats Finish()
    {
        if (!_finished)
        {
            FlushDeltas();
            EnsureOpen();
            _finished = true;
        }
        return _stats;
    }

    public void Dispose()
    {
    }
}

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

    public Action<ulong, ulong>? OnPageDigest { get; set; }

    public void AddPresent(ulong vaddr, ReadOnlySpan<byte> pages)
    {
        ulong nr = (ulong)pages.Length >> PageGeometry.PageShift;
        Begin(PagemapFlags.Present, vaddr, nr);
        long before = client.PageBytesSent;
        if (client.Encoder is { } enc)
        {
            SendPreamble(enc);
            int blockBytes = enc.BlockPages << PageGeometry.PageShift;
            for (int off = 0; off < pages.Length; off += blockBytes)
                client.SendPages(enc.EncodeBlock(pages.Slice(off, Math.Min(blockBytes, pages.Length - off))));
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
        EnsureOpen();
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
            EnsureOpen();
            _finished = true;
        }
        return _stats;
    }

    public void Dispose()
    {
    }
}

using System.Net.Sockets;
using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper.PageServer;

/// <summary>Where a dump sends its pages (<c>--page-server --address A --port N</c>) and how.</summary>
public sealed record PageServerEndpoint
{
    public required string Address { get; init; }
    public required int Port { get; init; }
    public PageServerLayout Layout { get; init; } = PageServerLayout.Current;
    /// <summary>TLS as CRIU's --tls options set it up; null = plain TCP.</summary>
    public PageServerTls? Tls { get; init; }
    /// <summary>A read or write that makes no progress for this long fails the dump.</summary>
    public TimeSpan IoTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>
    /// Send pages as compressed blocks of this codec and block size (<c>--ps-compress</c>, a
    /// criu-sharp extension only our page server understands); null = raw pages, as CRIU.
    /// </summary>
    public PageStoreOptions? WireCompression { get; init; }
    /// <summary>
    /// Ask the server for its extensions (PS_IOV_FEATURES, a criu-sharp extension) right after
    /// connecting, so delta pages can be sent; a server without them refuses the connection.
    /// </summary>
    public bool Deltas { get; init; }
}

/// <summary>
/// The dump side of CRIU's page-xfer protocol (criu/page-xfer.c): one connection per dump,
/// PARENT questions before any page moves, then per pagemap OPEN2 (one-byte has-parent answer)
/// and ADD_F entries in ascending address order, each PE_PRESENT one followed by its raw pages,
/// and finally CLOSE, answered by a 4-byte status once the server has everything.
/// <code>
///  client                                  server
///  PARENT(dst)            ──────────▶      int has_parent
///  OPEN2(dst)             ──────────▶      u8 has_parent
///  ADD_F(PRESENT,va,n) + n*4096 bytes ──▶  pages-N.img, pagemap entry
///  ADD_F(PARENT,va,n)     ──────────▶      pagemap entry (hole checked against the parent)
///  CLOSE                  ──────────▶      int32 status = 0
/// </code>
/// </summary>
public sealed class PageServerClient : IDisposable
{
    private const int WriteBufferBytes = 256 << 10;
    private readonly TcpClient _tcp;
    private readonly Stream _stream;
    private readonly BufferedStream _out;
    private readonly byte[] _hdr = new byte[PageServerIov.CurrentSize];
    private bool _closed;

    private PageServerClient(TcpClient tcp, Stream stream, PageServerLayout layout, PageStoreOptions? wire)
    {
        if (wire is { Compression: not PageCompression.None } w)
            Encoder = new PageServerBlocks.Encoder(w);
        _tcp = tcp;
        _stream = stream;
        _out = new BufferedStream(stream, WriteBufferBytes);
        Layout = layout;
    }

    public PageServerLayout Layout { get; }
    /// <summary>Set when pages travel as compressed blocks.</summary>
    internal PageServerBlocks.Encoder? Encoder { get; }
    /// <summary>Page bytes sent so far (headers excluded).</summary>
    public long PageBytesSent { get; private set; }
    /// <summary>Every byte sent so far, headers included.</summary>
    public long WireBytesSent { get; private set; }

    public static PageServerClient Connect(PageServerEndpoint ep)
    {
        var tcp = new TcpClient { NoDelay = true };
        try
        {
            int ms = (int)Math.Min(int.MaxValue, ep.IoTimeout.TotalMilliseconds);
            var connect = tcp.ConnectAsync(ep.Address, ep.Port);
            if (!connect.Wait(ms))
                throw new PageServerException($"page server {ep.Address}:{ep.Port} did not accept the connection within {ep.IoTimeout.TotalSeconds:0} s");
            tcp.ReceiveTimeout = ms;
            tcp.SendTimeout = ms;
            Stream s = tcp.GetStream();
            if (ep.Tls is not null)
                s = PageServerTlsSetup.AuthenticateClient(s, ep.Address, ep.Tls);
            var client = new PageServerClient(tcp, s, ep.Layout, ep.WireCompression);
            if (ep.Deltas)
                client.NegotiateDeltas(ep);
            return client;
        }
        catch (AggregateException e) when (e.InnerException is SocketException se)
        {
            tcp.Dispose();
            throw new PageServerException($"cannot connect to the page server at {ep.Address}:{ep.Port}: {se.Message}", inner: se);
        }
        catch
        {
            tcp.Dispose();
            throw;
        }
    }

    /// <summary>The server announced ADD_DELTA in its FEATURES answer: delta pages may be sent.</summary>
    public bool DeltaPages { get; private set; }

    /// <summary>
    /// PS_IOV_FEATURES (criu-sharp extension): a server with it answers its feature bits; a CRIU
    /// page server (or an older criu-sharp) does not know the command and closes the connection,
    /// so it never receives a delta.
    /// </summary>
    private void NegotiateDeltas(PageServerEndpoint ep)
    {
        SendHeader(new PageServerIov(PageServerIov.EncodeCmd(PageServerCommand.Features), 0, 0, 0));
        Flush();
        Span<byte> answer = stackalloc byte[sizeof(ulong)];
        try
        {
            _stream.ReadExactly(answer);
        }
        catch (Exception e) when (e is EndOfStreamException or IOException)
        {
            throw new PageServerException($"the page server at {ep.Address}:{ep.Port} does not take delta pages (it closed the connection on PS_IOV_FEATURES, a criu-sharp extension that CRIU's page server lacks): run without --delta", inner: e);
        }
        if ((PageServerDeltas.ReadFeatures(answer) & PageServerDeltas.FeatureDelta) == 0)
            throw new PageServerException($"the page server at {ep.Address}:{ep.Port} does not take delta pages (its PS_IOV_FEATURES answer lacks them): run without --delta");
        DeltaPages = true;
    }

    /// <summary>
    /// PS_IOV_ADD_DELTA (criu-sharp extension): <paramref name="records"/> holds one
    /// <see cref="PageServerDeltas.RecordBytes"/> record per page, <paramref name="deltas"/> their deltas.
    /// </summary>
    internal void AddDeltas(ulong vaddr, int nrPages, ulong dstId, ReadOnlySpan<byte> records, ReadOnlySpan<byte> deltas)
    {
        if (!DeltaPages)
            throw new InvalidOperationException("the page server did not announce delta pages");
        SendHeader(new PageServerIov(PageServerIov.EncodeCmd(PageServerCommand.AddDelta), (ulong)nrPages, vaddr, dstId));
        Span<byte> encoding = stackalloc byte[PageServerDeltas.EncodingBytes];
        PageServerDeltas.WriteEncoding(encoding, DeltaEncoding.Xbzrle);
        SendPages(encoding);
        SendPages(records);
        SendPages(deltas);
    }

    /// <summary>PS_IOV_PARENT: does the server's parent image set hold this pagemap?</summary>
    public bool HasParent(PageServerImageType type, ulong id)
    {
        SendHeader(new PageServerIov(PageServerIov.EncodeCmd(PageServerCommand.Parent), 0, 0, PageServerIov.EncodeDst(type, id)));
        Flush();
        Span<byte> answer = stackalloc byte[4];
        ReadAnswer(answer, "PARENT");
        return BitConverter.ToInt32(answer) != 0; // a C int in host byte order
    }

    /// <summary>PS_IOV_OPEN2: starts the pagemap; the answer says whether the server has its parent.</summary>
    public bool Open(PageServerImageType type, ulong id)
    {
        SendHeader(new PageServerIov(PageServerIov.EncodeCmd(PageServerCommand.Open2), 0, 0, PageServerIov.EncodeDst(type, id)));
        Flush();
        Span<byte> answer = stackalloc byte[1];
        ReadAnswer(answer, "OPEN2");
        return answer[0] != 0;
    }

    /// <summary>PS_IOV_ADD_F: one pagemap entry; for PE_PRESENT the caller sends nrPages * 4096 bytes next.</summary>
    public void AddF(PagemapFlags flags, ulong vaddr, ulong nrPages, ulong dstId) =>
        SendHeader(new PageServerIov(PageServerIov.EncodeCmd(PageServerCommand.AddF, flags), nrPages, vaddr, dstId));

    /// <summary>Raw pages, or (with <see cref="Encoder"/>) one block's wire bytes.</summary>
    public void SendPages(ReadOnlySpan<byte> bytes)
    {
        Write(bytes);
        PageBytesSent += bytes.Length;
    }

    /// <summary>PS_IOV_CLOSE: waits for the server's status, which it sends once every byte is received.</summary>
    public void Close(bool force = false)
    {
        if (_closed)
            return;
        SendHeader(new PageServerIov(PageServerIov.EncodeCmd(force ? PageServerCommand.ForceClose : PageServerCommand.Close), 0, 0, 0));
        Flush();
        Span<byte> answer = stackalloc byte[4];
        ReadAnswer(answer, "CLOSE");
        _closed = true;
        int status = BitConverter.ToInt32(answer);
        if (status != 0)
            throw new PageServerException($"the page server answered CLOSE with status {status}");
    }

    internal void SendHeader(in PageServerIov iov)
    {
        int n = PageServerIov.SizeOf(Layout);
        iov.Write(_hdr, Layout);
        Write(_hdr.AsSpan(0, n));
        CrashPoints.Hit("ps.send");
    }

    internal void Flush()
    {
        try
        {
            _out.Flush();
        }
        catch (IOException e)
        {
            throw Lost(e);
        }
    }

    private void Write(ReadOnlySpan<byte> bytes)
    {
        try
        {
            _out.Write(bytes);
            WireBytesSent += bytes.Length;
        }
        catch (IOException e)
        {
            throw Lost(e);
        }
    }

    internal void ReadAnswer(Span<byte> answer, string what)
    {
        try
        {
            _stream.ReadExactly(answer);
        }
        catch (EndOfStreamException e)
        {
            throw new PageServerException($"the page server closed the connection instead of answering {what}", inner: e);
        }
        catch (IOException e)
        {
            throw Lost(e);
        }
    }

    private static PageServerException Lost(IOException e) =>
        new($"lost the connection to the page server: {(e.InnerException ?? e).Message}", inner: e);

    public void Dispose()
    {
        Encoder?.Dispose();
        _stream.Dispose();
        _tcp.Dispose();
    }
}

/// <summary>The page server could not be reached, refused us, or the connection broke: a host or network problem, not bad input.</summary>
public sealed class PageServerException(string message, Exception? inner = null) : Exception(message, inner);

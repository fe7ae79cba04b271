using System.Net;
using System.Net.Sockets;
using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper.PageServer;

/// <summary>
/// The source side of a lazy migration (<c>dump --lazy-pages --address --port</c>): after the dump
/// it serves the lazy pages it kept (<see cref="LazyPageStore"/>) to one lazy-pages daemon, as
/// criu/page-xfer.c page_server_serve does in lazy mode.
/// <code>
///  daemon ── PS_IOV_GET {dst_id = pid &lt;&lt; 8 | PS_TYPE_PID, vaddr, nr_pages} ──▶
///         ◀── PS_IOV_ADD_F | PE_PRESENT &lt;&lt; 16 {same nr_pages, vaddr, dst_id} + nr_pages × 4 KiB
///  daemon ── PS_IOV_CLOSE ──▶  ◀── u32 status 0, end of session
/// </code>
/// A GET for pages the source does not hold ends the connection, as CRIU's page_server_get_pages
/// fails when page_pipe_read finds nothing; anything but GET and CLOSE is a protocol error.
/// Unlike CRIU, whose lazy page server ends with its one connection, a connection that breaks
/// before CLOSE (a daemon killed, a bad request) is dropped and the next daemon is served, so a
/// rerun of the daemon can still fetch every page; the pages go only when a daemon says CLOSE or
/// no daemon connects within the idle time. With TLS (criu/tls.c) both sides present a
/// certificate the CA signed; a daemon without one is refused and the next is awaited.
/// </summary>
public sealed class LazyPageServer : IDisposable
{
    /// <summary>At most this many pages per GET (16 MiB): a header never makes the server allocate more.</summary>
    public const ulong MaxPagesPerGet = 4096;

    private readonly TcpListener _listener;
    private readonly LazyPageStore _store;
    private readonly PageServerLayout _layout;
    private readonly PageServerTls? _tls;

    private LazyPageServer(TcpListener listener, LazyPageStore store, PageServerLayout layout, PageServerTls? tls)
    {
        _listener = listener;
        _store = store;
        _layout = layout;
        _tls = tls;
    }

    public static LazyPageServer Start(LazyPageStore store, string address, int port, PageServerLayout layout = PageServerLayout.Current, PageServerTls? tls = null)
    {
        var ip = IPAddress.TryParse(address, out var a) ? a : throw new DumperException($"--address {address}: not an IP address");
        if (tls is not null)
            PageServerTlsSetup.Check(tls);
        var l = new TcpListener(ip, port);
        try
        {
            l.Start();
        }
        catch (SocketException e)
        {
            throw new PageServerException($"cannot listen on {address}:{port}: {e.Message}", e);
        }
        return new LazyPageServer(l, store, layout, tls);
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
    public string Address => ((IPEndPoint)_listener.LocalEndpoint).Address.ToString();

    /// <summary>Pages sent so far.</summary>
    public long PagesServed { get; private set; }

    /// <summary>
    /// Serves daemons until one sends CLOSE (true). A connection that ends or breaks the protocol
    /// before CLOSE is reported through <paramref name="dropped"/> and the next daemon is awaited;
    /// when none connects within <paramref name="idle"/> (which also bounds each wait for a
    /// request), the session ends (false, with <paramref name="error"/> saying why).
    /// </summary>
    public bool Serve(TimeSpan idle, out string? error, Action<string>? dropped = null)
    {
        error = null;
        while (true)
        {
            TcpClient client;
            using (var cts = new CancellationTokenSource(idle))
            {
                try
                {
                    client = _listener.AcceptTcpClientAsync(cts.Token).AsTask().GetAwaiter().GetResult();
                }
                catch (OperationCanceledException)
                {
                    error = (error is null ? "" : error + "; then ") + $"no lazy-pages daemon connected within {idle.TotalSeconds:0.#} s";
                    return false;
                }
            }
            if (ServeConnection(client, idle, out string? why))
                return true;
            error = why;
            dropped?.Invoke(why!);
        }
    }

    private bool ServeConnection(TcpClient tcp, TimeSpan idle, out string? error)
    {
        error = null;
        using var client = tcp;
        client.NoDelay = true;
        client.ReceiveTimeout = client.SendTimeout = (int)idle.TotalMilliseconds;
        Stream s = client.GetStream();
        if (_tls is { } tls)
        {
            try
            {
                s = PageServerTlsSetup.AuthenticateServer(s, tls, idle);
            }
            catch (Exception e) when (e is System.Security.Authentication.AuthenticationException or IOException or OperationCanceledException or DumperException)
            {
                error = $"TLS handshake with a lazy-pages daemon failed: {(e.InnerException ?? e).Message}";
                return false;
            }
        }
        using var stream = s;
        int hs = PageServerIov.SizeOf(_layout);
        var head = new byte[hs];
        try
        {
            while (true)
            {
                stream.ReadExactly(head);
                var iov = PageServerIov.Read(head, _layout);
                switch (iov.Command)
                {
                    case PageServerCommand.Get:
                        if (iov.NrPages == 0 || iov.NrPages > MaxPagesPerGet || !PageServerIov.TryDecodeDst(iov.DstId, out var type, out ulong id) || type != PageServerImageType.Pid)
                        {
                            error = $"bad GET: {iov.NrPages} pages of dst_id 0x{iov.DstId:x}";
                            return false;
                        }
                        var pages = new byte[(int)iov.NrPages * PageGeometry.PageSize];
                        if (!_store.TryGet((int)id, iov.Vaddr, pages))
                        {
                            error = $"GET of pages the source does not hold: process {id}, 0x{iov.Vaddr:x}, {iov.NrPages} pages";
                            return false;
                        }
                        new PageServerIov(PageServerIov.EncodeCmd(PageServerCommand.AddF, PagemapFlags.Present), iov.NrPages, iov.Vaddr, iov.DstId).Write(head, _layout);
                        stream.Write(head);
                        stream.Write(pages);
                        PagesServed += (long)iov.NrPages;
                        CrashPoints.Hit("lazy.served");
                        break;
                    case PageServerCommand.Close or PageServerCommand.ForceClose:
                        CrashPoints.Hit("lazy.close-received");
                        stream.Write(BitConverter.GetBytes(0));
                        return true;
                    default:
                        error = $"unexpected {iov.Command} on a lazy-pages connection";
                        return false;
                }
            }
        }
        catch (IOException e)
        {
            error = $"the lazy-pages daemon's connection ended: {e.Message}";
            return false;
        }
    }

    public void Dispose() => _listener.Stop();
}

/// <summary>
/// The daemon's side: fetches lazy pages from a source's <see cref="LazyPageServer"/> (or CRIU's
/// page server in lazy mode) with PS_IOV_GET. Any failure (refused, reset, a short or wrong
/// answer) means the source is lost: <see cref="TryGet"/> returns false from then on.
/// </summary>
public sealed class PageServerLazySource : ILazyPageSource, IDisposable
{
    private readonly TcpClient? _tcp;
    private readonly Stream? _s;
    private readonly PageServerLayout _layout;
    private bool _lost;

    public PageServerLazySource(string address, int port, TimeSpan timeout, PageServerLayout layout = PageServerLayout.Current, PageServerTls? tls = null)
    {
        _layout = layout;
        try
        {
            _tcp = new TcpClient { NoDelay = true, ReceiveTimeout = (int)timeout.TotalMilliseconds, SendTimeout = (int)timeout.TotalMilliseconds };
            _tcp.Connect(address, port);
            Stream s = _tcp.GetStream();
            _s = tls is null ? s : PageServerTlsSetup.AuthenticateClient(s, address, tls);
        }
        catch (SocketException e)
        {
            ConnectError = $"cannot reach the source's page server at {address}:{port}: {e.Message}";
            _lost = true;
        }
        catch (PageServerException e)
        {
            ConnectError = e.Message;
            _lost = true;
        }
    }

    /// <summary>Why the first connection failed, or null.</summary>
    public string? ConnectError { get; }

    public bool TryGet(int pid, ulong va, Span<byte> dest)
    {
        if (_lost || _s is null)
            return false;
        int hs = PageServerIov.SizeOf(_layout);
        Span<byte> head = stackalloc byte[PageServerIov.CurrentSize];
        ulong nr = (ulong)(dest.Length / PageGeometry.PageSize);
        ulong dst = PageServerIov.EncodeDst(PageServerImageType.Pid, (ulong)pid);
        try
        {
            CrashPoints.Hit("lazy.get");
            new PageServerIov(PageServerIov.EncodeCmd(PageServerCommand.Get), nr, va, dst).Write(head, _layout);
            _s.Write(head[..hs]);
            _s.ReadExactly(head[..hs]);
            var r = PageServerIov.Read(head, _layout);
            if (r.Command != PageServerCommand.AddF || r.Flags != PagemapFlags.Present || r.NrPages != nr || r.Vaddr != va || r.DstId != dst)
            {
                _lost = true;
                return false;
            }
            _s.ReadExactly(dest);
            return true;
        }
        catch (IOException)
        {
            _lost = true;
            return false;
        }
    }

    /// <summary>PS_IOV_CLOSE: the source may stop serving (every page has arrived).</summary>
    public void Close()
    {
        if (_lost || _s is null)
            return;
        try
        {
            CrashPoints.Hit("lazy.close");
            Span<byte> head = stackalloc byte[PageServerIov.CurrentSize];
            new PageServerIov(PageServerIov.EncodeCmd(PageServerCommand.Close), 0, 0, 0).Write(head, _layout);
            _s.Write(head[..PageServerIov.SizeOf(_layout)]);
            Span<byte> status = stackalloc byte[4];
            _s.ReadExactly(status);
        }
        catch (IOException)
        {
            // The source went away after the last page: nothing is lost.
        }
        _lost = true;
    }

    public void Dispose()
    {
        _s?.Dispose();
        _tcp?.Dispose();
    }
}

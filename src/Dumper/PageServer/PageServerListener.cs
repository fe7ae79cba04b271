using System.Net;
using System.Net.Sockets;
using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper.PageServer;

/// <summary>Options of <c>page-server</c>, with CRIU's names.</summary>
public sealed record PageServerOptions
{
    /// <summary>-D: where pagemap-*.img and pages-*.img are written.</summary>
    public required string ImagesDir { get; init; }
    /// <summary>--prev-images-dir, relative to the images directory: written as the parent link.</summary>
    public string? PrevImagesDir { get; init; }
    /// <summary>--address; CRIU listens on every address by default.</summary>
    public string Address { get; init; } = "0.0.0.0";
    /// <summary>--port; 0 picks a free port (reported by <see cref="PageServerListener.Port"/>).</summary>
    public int Port { get; init; }
    public PageServerLayout Layout { get; init; } = PageServerLayout.Current;
    /// <summary>How the server stores the raw pages it receives.</summary>
    public PageStoreOptions PageStore { get; init; } = PageStoreOptions.Lz4();
    public PageServerTls? Tls { get; init; }
    /// <summary>A connection that sends nothing for this long is closed.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Stop after this many sessions ended with CLOSE (CRIU's page server serves one); 0 = until cancelled.</summary>
    public int Sessions { get; init; } = 1;
    /// <summary>
    /// Answer PS_IOV_FEATURES and take PS_IOV_ADD_DELTA (criu-sharp extensions); false behaves as
    /// CRIU's page server, which knows neither command (<c>page-server --no-extensions</c>).
    /// </summary>
    public bool Extensions { get; init; } = true;
}

/// <summary>What one connection did.</summary>
public sealed record PageServerSessionResult(
    string Peer, bool Closed, string? Error, int Pagemaps, ulong PagesWritten, ulong PagesInParent, long BytesReceived);

/// <summary>
/// <c>criu-sharp page-server</c> (criu/page-xfer.c cr_page_server + page_server_serve): accepts
/// connections one after another and serves each with a <see cref="PageServerSession"/>. A
/// connection that breaks the protocol is closed with one line on the log and the next one is
/// served; the images directory is left marked incomplete until a session ends with CLOSE.
/// </summary>
public sealed class PageServerListener : IDisposable
{
    private readonly TcpListener _listener;
    private readonly PageServerOptions _o;

    private PageServerListener(TcpListener listener, PageServerOptions options)
    {
        _listener = listener;
        _o = options;
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
    public string Address => ((IPEndPoint)_listener.LocalEndpoint).Address.ToString();

    public static PageServerListener Start(PageServerOptions options)
    {
        if (options.Tls is { } tls)
            PageServerTlsSetup.Check(tls);
        PageServerSession.CheckImagesDir(options);
        if (!IPAddress.TryParse(options.Address, out var ip))
        {
            var found = Dns.GetHostAddresses(options.Address);
            ip = found.Length > 0 ? found[0] : throw new DumperException($"--address {options.Address}: no such host");
        }
        var l = new TcpListener(ip, options.Port);
        try
        {
            l.Start(4);
        }
        catch (SocketException e)
        {
            throw new DumperException($"page server cannot listen on {options.Address}:{options.Port}: {e.Message}", inner: e);
        }
        return new PageServerListener(l, options);
    }

    /// <summary>
    /// Serves connections until <see cref="PageServerOptions.Sessions"/> of them ended with CLOSE,
    /// or <paramref name="ct"/> is cancelled. <paramref name="log"/> gets one line per connection.
    /// </summary>
    public IReadOnlyList<PageServerSessionResult> Serve(Action<string>? log = null, CancellationToken ct = default)
    {
        var results = new List<PageServerSessionResult>();
        int closed = 0;
        using var reg = ct.Register(() => _listener.Stop());
        while (_o.Sessions == 0 || closed < _o.Sessions)
        {
            TcpClient tcp;
            try
            {
                tcp = _listener.AcceptTcpClient();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException)
            {
                if (ct.IsCancellationRequested)
                    break;
                throw;
            }
            var r = ServeOne(tcp);
            results.Add(r);
            if (r.Closed)
                closed++;
            log?.Invoke(r.Error is null
                ? $"page-server: {r.Peer}: {r.Pagemaps} pagemap(s), {r.PagesWritten} pages written, {r.PagesInParent} in parent, {r.BytesReceived} bytes received"
                : $"page-server: {r.Peer}: connection closed: {r.Error}");
        }
        return results;
    }

    private PageServerSessionResult ServeOne(TcpClient tcp)
    {
        string peer = tcp.Client.RemoteEndPoint?.ToString() ?? "?";
        using (tcp)
        {
            int ms = (int)Math.Min(int.MaxValue, _o.IdleTimeout.TotalMilliseconds);
            tcp.NoDelay = true;
            tcp.ReceiveTimeout = ms;
            tcp.SendTimeout = ms;
            Stream s = tcp.GetStream();
            try
            {
                if (_o.Tls is { } tls)
                    s = PageServerTlsSetup.AuthenticateServer(s, tls, _o.IdleTimeout);
            }
            catch (Exception e)
            {
                return new PageServerSessionResult(peer, false, $"TLS handshake failed: {(e.InnerException ?? e).Message}", 0, 0, 0, 0);
            }
            using (s)
            {
                var session = new PageServerSession(_o, s);
                return session.Run(peer);
            }
        }
    }

    public void Dispose() => _listener.Stop();
}

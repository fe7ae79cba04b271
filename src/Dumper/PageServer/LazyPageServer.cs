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
/// A GET for pages the source does not hold ends the session, as CRIU's page_server_get_pages
/// fails when page_pipe_read finds nothing; anything but GET and CLOSE is a protocol error.
/// </summary>
public sealed class LazyPageServer : IDisposable
{
    /// <summary>At most this many pages per GET (16 MiB): a header never makes the server allocate more.</summary>
    public const ulong MaxPagesPerGet = 4096;

    private readonly TcpListener _listener;
    private readonly LazyPageStore _store;
    private readonly PageServerLayout _layout;

    private LazyPageServer(TcpListener listener, LazyPageStore store, PageServerLayout layout)
    {
        _listener = listener;
        _store = store;
        _layout = layout;
    }

    public static LazyPageServer Start(LazyPageStore store, string address, int port, PageServerLayout layout = PageServerLayout.Current)
    {
        var ip = IPAddress.TryParse(address, out var a) ? a : throw new DumperException($"--address {address}: not an IP address");
        var l = new TcpListener(ip, port);
        try
        {
            l.Start();
        }
        catch (SocketException e)
        {
            throw new PageServerException($"cannot listen on {address}:{port}: {e.Message}", e);
        }
        return new LazyPageServer(l, store, layout);
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
    public string Address => ((IPEndPoint)_listener.LocalEndpoint).Address.ToString();

    /// <summary>Pages sent so far.</summary>
    public long PagesServed { get; private set; }

    /// <summary>
    /// Serves one daemon until it sends CLOSE (true) or the connection ends or breaks the protocol
    /// (false, with <paramref name="error"/> saying why). <paramref name="idle"/> bounds each wait.
    /// </summary>
    public bool ServeOne(TimeSpan idle, out string? error)
    {
        error = null;
        using var client = _listener.AcceptTcpClient();
        client.NoDelay = true;
        client.ReceiveTimeout = client.SendTimeout = (int)idle.TotalMilliseconds;
        using var s = client.GetStream();
        int hs = PageServerIov.SizeOf(_layout);
        var head = new byte[hs];
        try
        {
            while (true)
            {
                s.ReadExactly(head);
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
                        s.Write(head);
                        s.Write(pages);
                        PagesServed += (long)iov.NrPages;
                        break;
                    case PageServerCommand.Close or PageServerCommand.ForceClose:
                        s.Write(BitConverter.GetBytes(0));
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
    private readonly NetworkStream? _s;
    private readonly PageServerLayout _layout;
    private bool _lost;

    public PageServerLazySource(string address, int port, TimeSpan timeout, PageServerLayout layout = PageServerLayout.Current)
    {
        _layout = layout;
        try
        {
            _tcp = new TcpClient { NoDelay = true, ReceiveTimeout = (int)timeout.TotalMilliseconds, SendTimeout = (int)timeout.TotalMilliseconds };
            _tcp.Connect(address, port);
            _s = _tcp.GetStream();
        }
        catch (SocketException e)
        {
            ConnectError = $"cannot reach the source's page server at {address}:{port}: {e.Message}";
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

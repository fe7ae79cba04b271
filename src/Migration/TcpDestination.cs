using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;

namespace CriuSharp.Migration;

/// <summary>
/// <c>migrate --transport tcp</c>: where the destination is and how it is reached. With no
/// <see cref="Address"/> the source starts the destination itself, a second criu-sharp process
/// (<see cref="DestinationCommand"/> followed by <c>migrate-service</c>) listening on loopback.
/// </summary>
public sealed record TcpTransport
{
    /// <summary>A running <c>migrate-service</c>'s address; null = start one locally.</summary>
    public string? Address { get; init; }
    public int Port { get; init; }
    /// <summary>How to start criu-sharp (e.g. <c>dotnet criu-sharp.dll</c>) when the destination is started locally.</summary>
    public IReadOnlyList<string> DestinationCommand { get; init; } = [];
    /// <summary>
    /// The locally started destination's directory: its received images in DIR/images, its machine
    /// in DIR/machine. Null = a temporary directory removed afterwards.
    /// </summary>
    public string? DestinationDir { get; init; }
    /// <summary>Any wait for the other side longer than this fails the migration.</summary>
    public TimeSpan IoTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>
    /// CRIU's TLS options; null = plain TCP. When set, the control connection, every page-server
    /// session and the lazy page session are TLS with both sides' certificates checked against the
    /// CA, and a destination started here is given the same options.
    /// </summary>
    public PageServerTls? Tls { get; init; }
    /// <summary>
    /// Both sides run a tiny migration in process before the first freeze (<see cref="CodeWarmup"/>),
    /// so the downtime does not count .NET's first-call compilation. Off only to measure that cost.
    /// </summary>
    public bool WarmUp { get; init; } = true;
}

/// <summary>Where a tcp migration's destination was and what it kept.</summary>
/// <param name="ImagesRoot">The received images (null when the destination's directory was temporary).</param>
/// <param name="Machine">The machine the tree was restored into (null when temporary).</param>
/// <param name="ProcessId">The destination process this migration started (null: it was running already).</param>
/// <param name="Tls">Whether every connection to it was TLS (<see cref="TcpTransport.Tls"/>).</param>
public sealed record DestinationInfo(string Address, int Port, string? ImagesRoot, string? Machine, int? ProcessId, bool Tls = false);

/// <summary>
/// The source's handle on the destination: the control connection to its <c>migrate-service</c>,
/// and, when the destination was started here, its process.
/// </summary>
internal sealed class TcpDestination : IDisposable
{
    private readonly MigrationChannel _ch;
    private readonly TcpClient _tcp;
    private readonly Process? _proc;
    private readonly string? _tempDir;
    private readonly StderrTail? _stderr;

    private TcpDestination(TcpClient tcp, Stream stream, Process? proc, string? tempDir, StderrTail? stderr, string address, int port)
    {
        _tcp = tcp;
        _ch = new MigrationChannel(stream);
        _proc = proc;
        _tempDir = tempDir;
        _stderr = stderr;
        Address = address;
        Port = port;
    }

    public string Address { get; }
    public int Port { get; }
    public int? ProcessId => _proc?.Id;
    /// <summary>The address the destination reaches this host on (the control connection's local end).</summary>
    public IPAddress LocalAddress => ((IPEndPoint)_tcp.Client.LocalEndPoint!).Address is { IsIPv4MappedToIPv6: true } a ? a.MapToIPv4() : ((IPEndPoint)_tcp.Client.LocalEndPoint!).Address;
    public string ImagesRoot { get; private set; } = "";
    public string Machine { get; private set; } = "";

    public static TcpDestination Open(TcpTransport t)
    {
        // Unreadable certificates are the user's to fix, before anything starts.
        if (t.Tls is { } certs)
            PageServerTlsSetup.Check(certs);
        if (t.Address is { } addr)
        {
            var tcp = Connect(addr, t.Port, t.IoTimeout);
            return new TcpDestination(tcp, Secure(tcp, addr, t.Port, t.Tls, null, null), null, null, null, addr, t.Port);
        }
        if (t.DestinationCommand.Count == 0)
            throw new MigrationTransportException("no command to start the destination with");
        string? temp = null;
        string dir = t.DestinationDir ?? (temp = Path.Combine(Path.GetTempPath(), "criu-sharp-destination-" + Guid.NewGuid().ToString("N")));
        ClearPreviousDestination(dir);
        var psi = new ProcessStartInfo(t.DestinationCommand[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in t.DestinationCommand.Skip(1))
            psi.ArgumentList.Add(a);
        foreach (var a in new[]
                 {
                     "migrate-service", "-D", Path.Combine(dir, "images"), "--machine", Path.Combine(dir, "machine"),
                     "--address", "127.0.0.1", "--port", "0", "--ps-timeout", ((int)t.IoTimeout.TotalSeconds).ToString(CultureInfo.InvariantCulture),
                 })
            psi.ArgumentList.Add(a);
        if (t.Tls is { } tls)
        {
            foreach (var a in new[] { "--tls", "--tls-cacert", Path.GetFullPath(tls.CaCert), "--tls-cert", Path.GetFullPath(tls.Cert), "--tls-key", Path.GetFullPath(tls.Key) })
                psi.ArgumentList.Add(a);
            if (tls.NoCnVerify)
                psi.ArgumentList.Add("--tls-no-cn-verify");
        }
        psi.Environment.Remove("CRIU_SHARP_MACHINE");
        // Methods with loops compiled fully optimised at their first call (during the warm-up), not
        // at tier 0 and then recompiled by on-stack replacement once the real restore's loops run
        // long: that recompilation otherwise lands inside the downtime (hotcold: 16 methods,
        // a few hundred ms on a loaded machine, against 9 methods and 16 ms with this setting).
        if (t.WarmUp)
            psi.Environment["DOTNET_TC_QuickJitForLoops"] = "0";
        Process proc;
        try
        {
            proc = Process.Start(psi) ?? throw new MigrationTransportException("the destination process did not start");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new MigrationTransportException($"cannot start the destination ({t.DestinationCommand[0]}): {e.Message}", e);
        }
        var stderr = new StderrTail(proc);
        try
        {
            var line = proc.StandardOutput.ReadLineAsync();
            if (!line.Wait(t.IoTimeout) || line.Result is not { } l || !l.StartsWith("listening on ", StringComparison.Ordinal))
                throw new MigrationTransportException($"the destination did not start listening{stderr.Why(proc)}");
            string ep = l["listening on ".Length..];
            int colon = ep.LastIndexOf(':');
            string a = ep[..colon];
            int port = int.Parse(ep[(colon + 1)..], CultureInfo.InvariantCulture);
            // Drain its stdout so it never blocks on a full pipe.
            _ = proc.StandardOutput.ReadToEndAsync();
            var tcp = Connect(a, port, t.IoTimeout);
            return new TcpDestination(tcp, Secure(tcp, a, port, t.Tls, proc, stderr), proc, temp, stderr, a, port);
        }
        catch
        {
            Stop(proc);
            if (temp is not null)
                TryDelete(temp);
            throw;
        }
    }

    /// <summary>
    /// A --dest-dir that holds a previous migration's destination (images/ and machine/ only) is
    /// cleared, as -D of migrate replaces a previous migrate's output; anything else is refused.
    /// </summary>
    private static void ClearPreviousDestination(string dir)
    {
        if (!Directory.Exists(dir) || !Directory.EnumerateFileSystemEntries(dir).Any())
            return;
        var entries = Directory.EnumerateFileSystemEntries(dir).ToList();
        if (!entries.All(e => Directory.Exists(e) && Path.GetFileName(e) is "images" or "machine"))
            throw new Dumper.DumperException("--dest-dir is not empty and is not a previous migration's destination (images/ and machine/)", null, dir);
        foreach (var e in entries)
            Directory.Delete(e, true);
    }

    private static TcpClient Connect(string address, int port, TimeSpan timeout)
    {
        var tcp = new TcpClient { NoDelay = true };
        try
        {
            var c = tcp.ConnectAsync(address, port);
            if (!c.Wait(timeout))
                throw new MigrationTransportException($"the destination at {address}:{port} did not accept the connection within {timeout.TotalSeconds:0} s");
            int ms = (int)Math.Min(int.MaxValue, timeout.TotalMilliseconds);
            tcp.ReceiveTimeout = tcp.SendTimeout = ms;
            return tcp;
        }
        catch (AggregateException e) when (e.InnerException is SocketException se)
        {
            tcp.Dispose();
            throw new MigrationTransportException($"cannot connect to the destination at {address}:{port}: {se.Message}", se);
        }
        catch
        {
            tcp.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The control connection's stream: with TLS, authenticated both ways (criu/tls.c's rules: the
    /// destination's certificate must chain to the CA and, unless --tls-no-cn-verify, name the
    /// address; ours must chain to the destination's CA). A refused handshake is a lost destination.
    /// </summary>
    private static Stream Secure(TcpClient tcp, string address, int port, PageServerTls? tls, Process? proc, StderrTail? stderr)
    {
        if (tls is null)
            return tcp.GetStream();
        try
        {
            return PageServerTlsSetup.AuthenticateClient(tcp.GetStream(), address, tls, "the destination");
        }
        catch (PageServerException e)
        {
            tcp.Dispose();
            string fate = proc is null ? "" : stderr!.Why(proc);
            throw new MigrationTransportException($"TLS handshake with the destination at {address}:{port} failed: {(e.InnerException ?? e).Message}{fate}", e);
        }
    }

    /// <summary>Sends a request and reads its answer; any failure names the destination's state.</summary>
    public ControlReply Call(ControlRequest r, IReadOnlyList<(string Name, string Path)>? files = null, string? filesInto = null)
    {
        ControlReply reply;
        try
        {
            _ch.Send(r, files);
            reply = _ch.Receive<ControlReply>();
            if (reply.Files is { Count: > 0 } back)
            {
                if (filesInto is null)
                    throw new MigrationTransportException($"the destination answered '{r.Cmd}' with files");
                _ch.ReceiveFiles(back, filesInto, 1L << 30);
            }
        }
        catch (Exception e) when (e is IOException or MigrationTransportException or SocketException)
        {
            throw Lost(e);
        }
        if (reply.Error is { } err)
            throw new MigrationTransportException($"the destination refused '{r.Cmd}': {err}");
        return reply;
    }

    /// <summary>The connection broke: say why in one line, with the destination process's fate when it is ours.</summary>
    public MigrationTransportException Lost(Exception e)
    {
        if (e is MigrationTransportException { InnerException: null })
            return (MigrationTransportException)e;
        string fate = _proc is null ? "" : _stderr!.Why(_proc);
        // The page server's and the dumper's own lines already say what broke.
        if (e is PageServerException or Dumper.DumperException)
            return new MigrationTransportException(e.Message + fate, e);
        string why = (e.InnerException as SocketException)?.Message ?? (e.InnerException as IOException)?.Message ?? e.Message;
        return new MigrationTransportException($"lost the destination at {Address}:{Port}: {why}{fate}", e);
    }

    public void Hello(ControlRequest r)
    {
        var reply = Call(r);
        ImagesRoot = reply.ImagesRoot ?? "";
        Machine = reply.Machine ?? "";
    }

    public long BytesSent => _ch.BytesSent;

    /// <summary>Ends the session and waits for a destination we started to exit.</summary>
    public void Close()
    {
        Call(new ControlRequest { Cmd = "close" });
        if (_proc is not null && !_proc.WaitForExit(10_000))
            Stop(_proc);
    }

    public bool KeepsDestinationDir => _tempDir is null;

    private static void Stop(Process p)
    {
        try
        {
            if (!p.HasExited)
                p.Kill(true);
            p.WaitForExit(5_000);
        }
        catch (InvalidOperationException)
        {
        }
    }

    private static void TryDelete(string dir)
    {
        try { Directory.Delete(dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    public void Dispose()
    {
        _ch.Dispose();
        _tcp.Dispose();
        if (_proc is not null)
        {
            Stop(_proc);
            _proc.Dispose();
        }
        if (_tempDir is not null)
            TryDelete(_tempDir);
    }

    /// <summary>The last lines a started destination wrote on stderr, to say why it stopped.</summary>
    private sealed class StderrTail
    {
        private readonly Queue<string> _lines = new();

        public StderrTail(Process p)
        {
            p.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is null)
                    return;
                lock (_lines)
                {
                    _lines.Enqueue(e.Data);
                    if (_lines.Count > 5)
                        _lines.Dequeue();
                }
            };
            p.BeginErrorReadLine();
        }

        public string Why(Process p)
        {
            string? exit = null;
            if (p.WaitForExit(2_000))
                exit = p.ExitCode == 137 || p.ExitCode == -1 ? "was killed" : $"exited with code {p.ExitCode}";
            string? last;
            lock (_lines)
                last = _lines.LastOrDefault(l => l.StartsWith("criu-sharp: ", StringComparison.Ordinal));
            return exit is null ? "" : $" (the destination process {p.Id} {exit}{(last is null ? "" : ": " + last["criu-sharp: ".Length..])})";
        }
    }
}

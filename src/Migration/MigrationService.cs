using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using CriuSharp.Dumper;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Migration;

/// <summary>Options of <c>migrate-service</c>, the destination of <c>migrate --transport tcp</c>.</summary>
public sealed record MigrationServiceOptions
{
    /// <summary>Where the received image directories go: DIR/1, DIR/2, …, each with its parent link.</summary>
    public required string ImagesDir { get; init; }
    /// <summary>The machine directory the tree is restored into (created by the restore; must not hold a machine).</summary>
    public required string MachineDir { get; init; }
    public string Address { get; init; } = "0.0.0.0";
    public int Port { get; init; }
    /// <summary>Any wait for the source (a request, a page-server session, a lazy page) longer than this fails the migration.</summary>
    public TimeSpan IoTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>
    /// CRIU's TLS options; null = plain TCP. When set, the control connection, the page servers it
    /// starts and its lazy page session are TLS, and a source without a certificate the CA signed is refused.
    /// </summary>
    public PageServerTls? Tls { get; init; }
}

/// <summary>What the service did for its one source.</summary>
public sealed record MigrationServiceResult(string Peer, bool Completed, string? Error, int ImageDirs, bool Restored);

/// <summary>
/// The destination of a live migration over TCP, as P.Haul's p.haul-service: it takes one source's
/// requests on a control connection (<see cref="MigrationChannel"/>) and does the destination's
/// work in this process:
/// <code>
///  hello        ─▶ mark DIR incomplete, remember the kernel and page store
///  page_server  ─▶ start a page server (CRIU's page-xfer) for DIR/i with parent ../i-1, answer its port
///  images       ─▶ wait for that page-server session's CLOSE, write the other images into DIR/i,
///                  pre-load DIR/i (--preload), answer the bytes received
///  fs           ─▶ the source's regular files, for the restored file mappings
///  restore      ─▶ boot the machine, restore DIR/n (lazily: fetch the lazy pages from the source's
///                  page server with PS_IOV_GET while the tree runs), run it on, verify, save the machine,
///                  remove DIR's incomplete marker; answer the measured times and the checks
/// </code>
/// Every failure leaves DIR marked incomplete (<see cref="ImageNames.IncompleteMarker"/> at its top)
/// and no machine that looks restored.
/// </summary>
public sealed class MigrationService : IDisposable
{
    /// <summary>A request's files may not exceed this (the images of one dump of a 16 GiB machine).</summary>
    private const long MaxFilesBytes = 16L << 30;

    private readonly TcpListener _listener;
    private readonly MigrationServiceOptions _o;

    private MigrationService(TcpListener listener, MigrationServiceOptions o)
    {
        _listener = listener;
        _o = o;
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
    public string Address => ((IPEndPoint)_listener.LocalEndpoint).Address.ToString();

    public static MigrationService Start(MigrationServiceOptions o)
    {
        string root = Path.GetFullPath(o.ImagesDir);
        string machine = Path.GetFullPath(o.MachineDir);
        if (Directory.Exists(root) && Directory.EnumerateFileSystemEntries(root).Any())
        {
            // What an interrupted service left (its marker, numbered directories, and the machine
            // its failed restore may have created) is cleared, so a rerun succeeds; anything else
            // is the user's.
            bool ours = File.Exists(Path.Combine(root, ImageNames.IncompleteMarker))
                        && Directory.EnumerateFileSystemEntries(root).All(e => Path.GetFileName(e) == ImageNames.IncompleteMarker
                            || (Directory.Exists(e) && int.TryParse(Path.GetFileName(e), NumberStyles.None, CultureInfo.InvariantCulture, out _)));
            if (!ours)
                throw new DumperException("the destination images directory is not empty and is not an interrupted migrate-service's", null, root);
            foreach (var e in Directory.EnumerateFileSystemEntries(root).ToList())
                if (Directory.Exists(e)) Directory.Delete(e, true);
            if (SimMachine.Exists(machine))
                Directory.Delete(machine, true);
            File.Delete(Path.Combine(root, ImageNames.IncompleteMarker));
        }
        if (SimMachine.Exists(machine))
            throw new DumperException($"a machine already exists in {machine}; the destination restores into a new one");
        if (o.Tls is { } tls)
            PageServerTlsSetup.Check(tls);
        if (!IPAddress.TryParse(o.Address, out var ip))
            throw new DumperException($"--address {o.Address}: not an IP address");
        var l = new TcpListener(ip, o.Port);
        try
        {
            l.Start(1);
        }
        catch (SocketException e)
        {
            throw new PageServerException($"migrate-service cannot listen on {o.Address}:{o.Port}: {e.Message}", e);
        }
        return new MigrationService(l, o with { ImagesDir = root, MachineDir = machine });
    }

    /// <summary>Serves one source from its hello to its close (or until the connection breaks).</summary>
    public MigrationServiceResult ServeOne(Action<string>? log = null)
    {
        var accept = _listener.AcceptTcpClientAsync();
        if (!accept.Wait(_o.IoTimeout))
        {
            _listener.Stop();
            return new MigrationServiceResult("-", false, $"no source connected within {_o.IoTimeout.TotalSeconds:0} s", 0, false);
        }
        using var tcp = accept.Result;
        _listener.Stop();
        string peer = tcp.Client.RemoteEndPoint?.ToString() ?? "?";
        tcp.NoDelay = true;
        tcp.ReceiveTimeout = tcp.SendTimeout = (int)Math.Min(int.MaxValue, _o.IoTimeout.TotalMilliseconds);
        Stream stream = tcp.GetStream();
        if (_o.Tls is { } tls)
        {
            try
            {
                stream = PageServerTlsSetup.AuthenticateServer(stream, tls, _o.IoTimeout);
            }
            catch (Exception e) when (e is System.Security.Authentication.AuthenticationException or IOException or OperationCanceledException)
            {
                // criu/tls.c refuses a peer whose certificate the CA did not sign; so does the service.
                return new MigrationServiceResult(peer, false, $"TLS handshake with the source {peer} failed: {(e.InnerException ?? e).Message}", 0, false);
            }
        }
        var session = new Session(_o, new MigrationChannel(stream), LocalAddress(tcp), log);
        try
        {
            session.Run();
            return new MigrationServiceResult(peer, true, null, session.Dirs, session.Restored);
        }
        catch (Exception e) when (e is MigrationTransportException or IOException or SocketException or DumperException
                                      or ImageFormatException or PageServerException or MachineStateException)
        {
            return new MigrationServiceResult(peer, false, (e.InnerException is SocketException se ? se.Message : null) ?? e.Message, session.Dirs, session.Restored);
        }
        finally
        {
            session.Dispose();
        }
    }

    public void Dispose() => _listener.Stop();

    private static IPAddress LocalAddress(TcpClient tcp)
    {
        var a = ((IPEndPoint)tcp.Client.LocalEndPoint!).Address;
        return a.IsIPv4MappedToIPv6 ? a.MapToIPv4() : a;
    }

    private sealed class Session(MigrationServiceOptions o, MigrationChannel ch, IPAddress local, Action<string>? log) : IDisposable
    {
        private SimKernel.KernelConfig? _kernel;
        private PageStoreOptions _store = PageStoreOptions.Lz4();
        private PreloadedPages? _preload;
        private CostModel _cost = CostModel.Default;
        private PageServerListener? _ps;
        private Task<IReadOnlyList<PageServerSessionResult>>? _serving;
        private int _psIndex;
        private Task? _preloading;

        private void WaitPreload()
        {
            var t = _preloading;
            _preloading = null;
            try
            {
                t?.Wait();
            }
            catch (AggregateException e) when (e.InnerException is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerException).Throw();
            }
        }
        private readonly List<(string Path, byte[] Contents)> _fs = [];

        public int Dirs { get; private set; }
        public bool Restored { get; private set; }

        private string Marker => Path.Combine(o.ImagesDir, ImageNames.IncompleteMarker);

        private string DirOf(int index) => Path.Combine(o.ImagesDir, index.ToString(CultureInfo.InvariantCulture));

        public void Run()
        {
            while (true)
            {
                var req = ch.Receive<ControlRequest>();
                ControlReply reply;
                try
                {
                    reply = req.Cmd switch
                    {
                        "hello" => Hello(req),
                        "page_server" => StartPageServer(req),
                        "images" => Images(req),
                        "fs" => Fs(req),
                        "restore" => Restore(req),
                        "close" => new ControlReply(),
                        _ => throw new MigrationTransportException($"unknown request '{req.Cmd}'"),
                    };
                }
                catch (Exception e) when (e is DumperException or ImageFormatException or MachineStateException or PageServerException
                                              or MigrationTransportException { InnerException: null })
                {
                    // Refused, not broken: tell the source, then end the session.
                    ch.Send(new ControlReply { Error = e.Message });
                    throw;
                }
                ch.Send(reply, reply.ReplyFiles);
                if (req.Cmd == "close")
                    return;
            }
        }

        private void RequireHello()
        {
            if (_kernel is null)
                throw new MigrationTransportException("the first request must be hello");
        }

        private ControlReply Hello(ControlRequest r)
        {
            if (r.Version != MigrationChannel.ProtocolVersion)
                throw new MigrationTransportException($"the source speaks control protocol {r.Version}, this destination {MigrationChannel.ProtocolVersion}");
            if (r.Kernel is null)
                throw new MigrationTransportException("hello without a kernel");
            try
            {
                _kernel = r.Kernel.ToConfig();
            }
            catch (ArgumentException e)
            {
                throw new MigrationTransportException($"hello: {e.Message}");
            }
            int block = Math.Clamp(r.BlockPages, 1, 64);
            _store = r.Compression switch
            {
                "none" => PageStoreOptions.Raw,
                "zstd" => PageStoreOptions.Zstd(block),
                _ => PageStoreOptions.Lz4(block),
            };
            _preload = r.Preload ? new PreloadedPages() : null;
            if (r.DecompressBytesPerSecond > 0 && r.CopyBytesPerSecond > 0)
                _cost = CostModel.Default with { DecompressBytesPerSecond = r.DecompressBytesPerSecond, CopyBytesPerSecond = r.CopyBytesPerSecond };
            ulong warmNs = 0;
            if (r.WarmUp)
            {
                // Before the source freezes anything: the restore's code is compiled now, not in the downtime.
                var mode = Enum.TryParse<MigrationMode>(r.Mode, ignoreCase: true, out var m) ? m : MigrationMode.Precopy;
                var (took, why) = CodeWarmup.Run(new MigrationOptions
                {
                    WorkloadPath = "",
                    Kernel = _kernel,
                    Mode = mode,
                    PageStore = _store,
                    Preload = r.Preload,
                    ElideUnchanged = r.ElideUnchanged,
                    DeltaCacheBytes = r.DeltaCacheBytes,
                }, finalDir => WarmRestore(finalDir, mode != MigrationMode.Precopy));
                warmNs = Ns(took);
                log?.Invoke(why is null ? $"migrate-service: warmed up ({mode.ToString().ToLowerInvariant()}) in {took.TotalMilliseconds:0} ms"
                    : $"migrate-service: warning: the warm-up failed ({why}); the downtime may include compilation");
            }
            Directory.CreateDirectory(o.ImagesDir);
            // Removed only once the tree is restored and verified: a destination that dies or is
            // abandoned leaves the directory recognisably incomplete.
            File.WriteAllText(Marker, "criu-sharp: migrate-service has not finished restoring from these images\n");
            log?.Invoke($"migrate-service: source connected; images into {o.ImagesDir}, machine {o.MachineDir}");
            return new ControlReply { ImagesRoot = o.ImagesDir, Machine = o.MachineDir, WarmUpNs = warmNs };
        }

        /// <summary>The warm-up's images restored as <see cref="Restore"/> does: into a saved machine (a temporary one).</summary>
        private void WarmRestore(string finalDir, bool lazy)
        {
            string dir = Path.Combine(Path.GetTempPath(), "criu-sharp-warmup-machine-" + Guid.NewGuid().ToString("N"));
            try
            {
                using var m = SimMachine.Create(dir, _kernel!, TimeSpan.FromSeconds(30));
                Criu.Restore(m.AsKernelApi(), new RestoreOptions { ImagesDir = finalDir, Verify = true, Cost = _cost, LazyPages = lazy });
                m.Save();
            }
            finally
            {
                try { Directory.Delete(dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            }
        }

        private ControlReply StartPageServer(ControlRequest r)
        {
            RequireHello();
            if (_ps is not null)
                throw new MigrationTransportException($"page_server {r.Index} while the page server of {_psIndex} still runs");
            if (r.Index != Dirs + 1)
                throw new MigrationTransportException($"page_server {r.Index}: expected images directory {Dirs + 1}");
            _ps = PageServerListener.Start(new PageServerOptions
            {
                ImagesDir = DirOf(r.Index),
                PrevImagesDir = r.Index > 1 ? "../" + (r.Index - 1).ToString(CultureInfo.InvariantCulture) : null,
                Address = local.ToString(),
                Port = 0,
                PageStore = _store,
                IdleTimeout = o.IoTimeout,
                Sessions = 1,
                Tls = o.Tls,
            });
            _psIndex = r.Index;
            var ps = _ps;
            _serving = Task.Run(() => ps.Serve());
            return new ControlReply { Port = _ps.Port };
        }

        private ControlReply Images(ControlRequest r)
        {
            RequireHello();
            if (r.Index != Dirs + 1)
                throw new MigrationTransportException($"images {r.Index}: expected images directory {Dirs + 1}");
            string dir = DirOf(r.Index);
            PageServerSessionResult? session = null;
            if (_ps is not null)
            {
                // The dump has closed its page-server session before it sends the rest.
                if (!_serving!.Wait(o.IoTimeout))
                    throw new MigrationTransportException($"the page server of images directory {r.Index} got no CLOSE within {o.IoTimeout.TotalSeconds:0} s");
                _ps.Dispose();
                _ps = null;
                var sessions = _serving.Result;
                session = sessions.Count == 0 ? null : sessions[^1];
                if (session is not { Closed: true })
                    throw new MigrationTransportException($"the page-server session of images directory {r.Index} failed: {session?.Error ?? "no session"}");
            }
            else
            {
                // No page server (a lazy final dump): every image, pages included, comes here.
                var id = ImageDirectory.Create(dir);
                if (r.Index > 1)
                    id.LinkParent("../" + (r.Index - 1).ToString(CultureInfo.InvariantCulture));
                id.Dispose();
            }
            long bytes = ch.ReceiveFiles(r.Files ?? [], dir, MaxFilesBytes);
            File.Delete(Path.Combine(dir, ImageNames.IncompleteMarker));
            Dirs = r.Index;
            // Pre-loading runs while the source goes on with its next iteration; the next request
            // that needs the destination's state waits for it.
            if (_preload is not null && !r.Final)
            {
                WaitPreload();
                var preload = _preload;
                _preloading = Task.Run(() => preload.Apply(dir));
            }
            // The pagemaps go back to the source: a dump without a page server (a lazy final dump)
            // decides what is in its parent from the local parent's pagemaps, as CRIU's does.
            var pagemaps = session is null ? [] : new DirectoryInfo(dir).EnumerateFiles("pagemap-*.img")
                .OrderBy(f => f.Name, StringComparer.Ordinal).Select(f => (f.Name, f.FullName, f.Length)).ToList();
            return new ControlReply
            {
                PageBytesReceived = session?.BytesReceived ?? 0,
                PagesWritten = session?.PagesWritten ?? 0,
                PagesInParent = session?.PagesInParent ?? 0,
                FilesBytes = bytes,
                Files = pagemaps.Select(f => new FileEntry(f.Name, f.Length)).ToList(),
                ReplyFiles = pagemaps.Select(f => (f.Name, f.FullName)).ToList(),
            };
        }

        private ControlReply Fs(ControlRequest r)
        {
            RequireHello();
            var files = r.Files ?? [];
            var paths = r.Paths ?? [];
            if (paths.Count != files.Count)
                throw new MigrationTransportException("fs: paths and files differ in number");
            long total = 0;
            for (int i = 0; i < files.Count; i++)
            {
                long size = files[i].Size;
                if (size < 0 || size > MaxFilesBytes - total)
                    throw new MigrationTransportException($"fs: {paths[i]} of {size} bytes exceeds the bound of one request");
                total += size;
                var bytes = new byte[size];
                ch.ReceiveExactly(bytes);
                _fs.Add((paths[i], bytes));
            }
            return new ControlReply { FilesBytes = total };
        }

        private ControlReply Restore(ControlRequest r)
        {
            RequireHello();
            if (r.Index != Dirs || Dirs == 0)
                throw new MigrationTransportException($"restore {r.Index}: the last images directory received is {Dirs}");
            WaitPreload();
            using var m = SimMachine.Create(o.MachineDir, _kernel!, TimeSpan.FromSeconds(30));
            foreach (var (path, contents) in _fs)
                if (m.Kernel.Fs.Lookup(path) is null)
                    m.Kernel.Fs.Create(path, contents);
            // The restored programs' schedule is absolute time: the destination's clock reads the
            // source's when the tree may resume (synchronised hosts).
            if (r.ArrivalNs > m.Kernel.UptimeNs)
                m.Kernel.AdvanceClock(r.ArrivalNs - m.Kernel.UptimeNs);
            var api = m.AsKernelApi();
            var sw = Stopwatch.StartNew();
            var jitBefore = System.Runtime.JitInfo.GetCompilationTime(currentThread: true);
            long methodsBefore = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
            RestoreResult rr;
            try
            {
                rr = Criu.Restore(api, new RestoreOptions { ImagesDir = DirOf(r.Index), Verify = true, Cost = _cost, Preloaded = _preload, LazyPages = r.Lazy });
            }
            catch (DumperException e)
            {
                return new ControlReply { Restore = new DestinationRestore { RestoreWallNs = Ns(sw.Elapsed), Error = e.Message } };
            }
            ulong restoreNs = Ns(sw.Elapsed);
            ulong jitNs = Ns(System.Runtime.JitInfo.GetCompilationTime(currentThread: true) - jitBefore);
            long methods = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true) - methodsBefore;
            MeasuredPostCopy? pc = null;
            string? error = null;
            int verified = rr.Stats.VmasVerified;
            if (r.Lazy)
            {
                (pc, int lazyVerified) = PostCopy(m, api, rr.Lazy, r);
                error = pc.Error;
                verified += lazyVerified;
            }
            VerifyReport Check(int p) => m.Kernel.FindTask(p) is { } t ? WorkloadApi.Verify(t)
                : new VerifyReport(p, "none", false, 0, null, "the task is gone: it was stopped because its lazy pages never arrived");
            var after = rr.Pids.Select(Check).ToList();
            IReadOnlyList<VerifyReport> afterContinue = [];
            if (error is null)
            {
                m.Advance(r.ContinueNs);
                afterContinue = rr.Pids.Select(Check).ToList();
            }
            m.Save();
            bool ok = error is null && after.All(v => v.Ok) && afterContinue.All(v => v.Ok);
            if (ok)
            {
                File.Delete(Marker);
                Restored = true;
            }
            log?.Invoke($"migrate-service: restored {string.Join(' ', rr.Pids)} into {o.MachineDir} in {restoreNs / 1e6:0.00} ms (of which JIT compilation {jitNs / 1e6:0.00} ms, {methods} methods){(ok ? "" : "; verification FAILED")}");
            return new ControlReply
            {
                Restore = new DestinationRestore
                {
                    RestoreWallNs = restoreNs,
                    JitNs = jitNs,
                    Stats = rr.Stats with { WallClock = null },
                    Error = error,
                    VmasVerified = verified,
                    AfterRestore = after,
                    AfterContinue = afterContinue,
                    Warnings = rr.Warnings.Select(w => w.Message).ToList(),
                    PostCopy = pc,
                },
            };
        }

        /// <summary>
        /// The lazy restore over the real link: the tree runs in 1 ms periods of virtual time; a
        /// fault fetches its page from the source's page server at once (PS_IOV_GET), and between
        /// periods the drain fetches the remaining pages for one millisecond of wall-clock time, so
        /// the pages arrive at the pace the socket delivers them (criu/uffd.c handle_remaining_pages)
        /// rather than at a modelled bandwidth. Each thread's faults stall it for the wall-clock time
        /// its GETs took.
        /// </summary>
        private (MeasuredPostCopy, int) PostCopy(SimMachine m, IKernel api, IReadOnlyList<LazyTask> tasks, ControlRequest r)
        {
            using var net = new PageServerLazySource(r.LazyAddress ?? "", r.LazyPort, o.IoTimeout, tls: o.Tls);
            var timed = new TimedLazySource(net);
            // The link model only sizes the drain's chunks here; the times below are measured.
            var link = new LazyLinkModel(0, 0);
            using var daemon = new LazyPagesDaemon(api, timed, tasks, link);
            long lazyPages = daemon.PagesRemaining;
            timed.Start();
            ulong lastPage = 0;
            long maxPeriods = daemon.PagesRemaining + 10;
            const ulong periodNs = PostCopyPeriods.PeriodNs;
            for (long n = 0; !daemon.Complete && !daemon.Failed && n < maxPeriods; n++)
            {
                daemon.BeginPeriod();
                ulong start = m.Kernel.UptimeNs;
                timed.Faulting = true;
                m.Advance(periodNs);
                timed.Faulting = false;
                foreach (var t in tasks)
                    if (m.Kernel.FindTask(t.Pid) is { } task)
                        WorkloadApi.Stall(task, start, timed.TakeStall(t.Pid));
                var slice = Stopwatch.StartNew();
                do
                    daemon.Drain((ulong)link.DrainChunkBytes);
                while (!daemon.Complete && !daemon.Failed && slice.Elapsed < TimeSpan.FromTicks((long)periodNs / 100));
                if (daemon.Complete)
                    lastPage = timed.LastArrivalNs();
            }
            if (daemon.Complete)
                net.Close();
            string? error = daemon.Error ?? (daemon.Complete ? daemon.VerifyError : "post-copy did not finish: lazy pages remain");
            if (net.ConnectError is { } ce && daemon.Failed)
                error = ce + "; " + error;
            var st = daemon.Stats;
            var waits = timed.FaultWaits;
            var stats = st with
            {
                FaultLatencyMeanNs = waits.Count == 0 ? 0 : (ulong)waits.Average(x => (double)x),
                FaultLatencyP50Ns = Percentile(waits, 0.5),
                FaultLatencyP99Ns = Percentile(waits, 0.99),
                FaultLatencyMaxNs = waits.Count == 0 ? 0 : waits.Max(),
                StallNs = waits.Aggregate(0UL, (s, x) => s + x),
            };
            return (new MeasuredPostCopy { Stats = stats, LazyPages = lazyPages, LastPageWallNs = lastPage, Error = error }, daemon.VmasVerified);
        }

        private static ulong Percentile(List<ulong> xs, double p)
        {
            if (xs.Count == 0)
                return 0;
            var sorted = xs.Order().ToList();
            return sorted[Math.Min(sorted.Count - 1, (int)Math.Ceiling(p * sorted.Count) - 1)];
        }

        public void Dispose()
        {
            _ps?.Dispose();
            try { _serving?.Wait(TimeSpan.FromSeconds(5)); } catch (AggregateException) { }
            ch.Dispose();
        }
    }

    internal static ulong Ns(TimeSpan t) => (ulong)Math.Max(0, t.Ticks) * 100;
}

/// <summary>
/// Times every page request the lazy-pages daemon makes: those made while the tree runs are its
/// faults (the thread waits for the answer), the others are the drain's.
/// </summary>
internal sealed class TimedLazySource(ILazyPageSource inner) : ILazyPageSource
{
    private readonly Dictionary<int, ulong> _stall = [];
    private long _lastArrivalTicks;
    private long _start;

    /// <summary>The tree resumed: arrival times count from here.</summary>
    public void Start() => _start = Stopwatch.GetTimestamp();

    /// <summary>Set while the destination runs the tree: a request then comes from a fault.</summary>
    public bool Faulting { get; set; }

    /// <summary>The wall-clock wait of each fault's request.</summary>
    public List<ulong> FaultWaits { get; } = [];

    public bool TryGet(int pid, ulong va, Span<byte> dest)
    {
        long t0 = Stopwatch.GetTimestamp();
        bool ok = inner.TryGet(pid, va, dest);
        long t1 = Stopwatch.GetTimestamp();
        if (ok)
            _lastArrivalTicks = t1;
        if (Faulting && ok)
        {
            ulong ns = (ulong)((t1 - t0) * 1_000_000_000.0 / Stopwatch.Frequency);
            FaultWaits.Add(ns);
            _stall[pid] = _stall.GetValueOrDefault(pid) + ns;
        }
        return ok;
    }

    public ulong TakeStall(int pid)
    {
        _stall.Remove(pid, out ulong ns);
        return ns;
    }

    /// <summary>Wall-clock time from <see cref="Start"/> to the last page's arrival.</summary>
    public ulong LastArrivalNs() =>
        _lastArrivalTicks <= _start ? 0 : (ulong)((_lastArrivalTicks - _start) * 1_000_000_000.0 / Stopwatch.Frequency);
}

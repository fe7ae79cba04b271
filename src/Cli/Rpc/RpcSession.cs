using System.Reflection;
using CriuSharp.Dumper;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat.Rpc;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Cli.Rpc;

/// <summary>How a service serves its clients: the machine directory requests work on by default and
/// how long a request waits for another command holding that machine.</summary>
internal sealed record RpcSettings(string MachineDir, TimeSpan LockWait)
{
    /// <summary>Page servers started by PAGE_SERVER requests, which outlive the request.</summary>
    public RpcPageServers PageServers { get; } = new();
}

/// <summary>
/// The page servers PAGE_SERVER requests started, each serving its one dump on a thread. The
/// process waits for them before it exits (<see cref="WaitAll"/>); stopping the service cancels
/// the ones still waiting for a connection.
/// </summary>
internal sealed class RpcPageServers : IDisposable
{
    private readonly List<Thread> _threads = [];
    private readonly CancellationTokenSource _stop = new();

    public void Start(PageServerListener listener, Action<string> log)
    {
        var t = new Thread(() =>
        {
            using (listener)
            {
                try
                {
                    listener.Serve(log, _stop.Token);
                }
                catch (Exception e)
                {
                    log($"{e.GetType().Name}: {CliApp.FirstLine(e.Message)}");
                }
            }
        })
        { IsBackground = true, Name = "page server" };
        lock (_threads)
            _threads.Add(t);
        t.Start();
    }

    public void Cancel() => _stop.Cancel();

    public void Dispose() => _stop.Dispose();

    public void WaitAll()
    {
        Thread[] all;
        lock (_threads)
            all = [.. _threads];
        foreach (var t in all)
            t.Join();
    }
}

/// <summary>
/// One client's conversation with the service, with CRIU's rules (criu/cr-service.c):
///
///   recv criu_req ─▶ handle ─▶ send criu_resp ─▶ keep_open? ──yes──▶ recv the next request
///                     │                           │no
///                     │                           └─ PRE_DUMP? ──yes──▶ only PRE_DUMP or DUMP may follow
///                     └─ notify_scripts: criu_resp{NOTIFY, script} ⇄ criu_req{NOTIFY, notify_success}
///
/// Unlike CRIU, which refuses keep_open on dump and restore (its process would leak resources)
/// and exits without an answer on a malformed request, every request type may keep the
/// connection open here, so one connection can run a whole migration, and every request that
/// can be read gets an answer before the connection closes. A failed dump, pre-dump or restore
/// ends the conversation, as in CRIU.
/// </summary>
internal sealed class RpcSession(RpcConnection connection, RpcSettings settings, Action<string>? diagnostics = null)
{
    private readonly RpcConnection _c = connection;
    private readonly RpcSettings _s = settings;
    private readonly List<string> _log = [];

    /// <summary>0 when every request succeeded; otherwise the exit code of the last failure.</summary>
    public ExitCode ExitStatus { get; private set; } = ExitCode.Success;

    public void Run()
    {
        bool preDumpLoop = false;
        while (true)
        {
            var got = _c.Receive();
            switch (got.Status)
            {
                case RpcConnection.ReceiveStatus.Closed:
                    return;
                case RpcConnection.ReceiveStatus.TooLarge:
                    Refuse(RpcErrno.EMSGSIZE, got.Problem!);
                    return;
                case RpcConnection.ReceiveStatus.Malformed:
                    Refuse(RpcErrno.EPROTO, got.Problem!);
                    return;
            }
            var req = got.Request!;
            if (preDumpLoop && req.Type is not (criu_req_type.PreDump or criu_req_type.Dump))
            {
                Refuse(RpcErrno.EBADRQC, $"bad request sequence: {Name(req.Type)} after PRE_DUMP (only PRE_DUMP or DUMP may follow a pre-dump on its connection, unless the pre-dump set keep_open)");
                return;
            }
            _log.Clear();
            criu_resp resp;
            try
            {
                resp = Handle(req);
            }
            catch (RpcDisconnectedException)
            {
                ExitStatus = ExitCode.Environment;
                diagnostics?.Invoke($"pid {_c.PeerPid}: {Name(req.Type)}: the client closed the connection during the request");
                return;
            }
            catch (Exception ex)
            {
                resp = Failure(req.Type, ex);
            }
            WriteLog(req);
            if (!_c.Send(resp))
                return;
            if (!resp.Success && req.Type is criu_req_type.Dump or criu_req_type.PreDump or criu_req_type.SinglePreDump or criu_req_type.Restore)
                return;
            preDumpLoop = req.Type == criu_req_type.PreDump && !req.KeepOpen;
            if (!req.KeepOpen && !preDumpLoop)
                return;
        }
    }

    /// <summary>An answer of type EMPTY to a request that could not be taken (CRIU's send_criu_err).</summary>
    private void Refuse(int errno, string message)
    {
        ExitStatus = ExitCode.Usage;
        diagnostics?.Invoke($"pid {_c.PeerPid}: {message}");
        _c.Send(new criu_resp { Type = criu_req_type.Empty, Success = false, CrErrno = errno, CrErrmsg = message });
    }

    private criu_resp Failure(criu_req_type type, Exception ex)
    {
        var (errno, code, message) = RpcErrors.Classify(ex);
        ExitStatus = code;
        _log.Add($"Error ({Name(type)}): {message}");
        diagnostics?.Invoke($"pid {_c.PeerPid}: {Name(type)}: {message}");
        bool known = Enum.IsDefined(type) && type is not (criu_req_type.Empty or criu_req_type.Notify);
        var resp = new criu_resp { Type = known ? type : criu_req_type.Empty, Success = false, CrErrno = errno, CrErrmsg = message };
        if (type == criu_req_type.Dump)
            resp.Dump = new criu_dump_resp { Restored = false };
        if (type == criu_req_type.Restore)
            resp.Restore = new criu_restore_resp { Pid = -1 };
        return resp;
    }

    private static string Name(criu_req_type t) => Enum.IsDefined(t)
        ? typeof(criu_req_type).GetField(t.ToString())!.GetCustomAttribute<Google.Protobuf.Reflection.OriginalNameAttribute>()!.Name
        : $"request type {(int)t}";

    private criu_resp Handle(criu_req req) => req.Type switch
    {
        criu_req_type.Dump => Dump(req, preDump: false),
        criu_req_type.PreDump or criu_req_type.SinglePreDump => Dump(req, preDump: true),
        criu_req_type.Restore => Restore(req),
        criu_req_type.Check => Check(req),
        criu_req_type.FeatureCheck => FeatureCheck(req),
        criu_req_type.Version => Version(),
        criu_req_type.WaitPid => WaitPid(req),
        criu_req_type.PageServer or criu_req_type.PageServerChld => PageServer(req),
        criu_req_type.CpuinfoDump or criu_req_type.CpuinfoCheck => throw new RpcException(RpcErrno.EOPNOTSUPP, ExitCode.Unsupported,
            $"{Name(req.Type)}: the simulated machine has no CPU feature set to record or compare"),
        _ => throw new RpcException(RpcErrno.EBADRQC, ExitCode.Usage, $"invalid request: {Name(req.Type)} is not a request a client may send"),
    };

    // ---- options shared by the requests ---------------------------------------------------------

    private static criu_opts Opts(criu_req req) =>
        req.Opts ?? throw new RpcException(RpcErrno.EBADRQC, ExitCode.Usage, $"{Name(req.Type)} needs opts (criu_opts with images_dir_fd)");

    private string MachineDir(criu_opts? o) =>
        o is { HasSimMachine: true, SimMachine.Length: > 0 } ? Path.GetFullPath(o.SimMachine) : _s.MachineDir;

    private SimMachine OpenMachine(criu_opts? o) => RealHost(o)
        ? throw new RpcException(RpcErrno.EOPNOTSUPP, ExitCode.Unsupported, "this request needs a simulated machine: /proc is the real host, where only DUMP, PRE_DUMP, SINGLE_PRE_DUMP, CHECK and FEATURE_CHECK work")
        : SimMachine.Open(MachineDir(o), _s.LockWait);

    /// <summary>CRIU_SHARP_MACHINE=/proc (or sim_machine "/proc"): the Linux host the service runs on.</summary>
    private bool RealHost(criu_opts? o) => MachineOptions.IsRealHostName(MachineDir(o));

    /// <summary>
    /// The images directory: images_dir_fd is a descriptor in the client's process, opened through
    /// /proc/PEER/fd/N with the peer's pid from SO_PEERCRED as CRIU does, so the client need not let
    /// it be inherited; images_dir (a path, CRIU 4.x) is used when the descriptor is -1.
    /// </summary>
    private string ImagesDir(criu_opts o)
    {
        if (o.HasImagesDirFd && o.ImagesDirFd >= 0)
            return ClientDirectory(o.ImagesDirFd, "images_dir_fd");
        if (o.HasImagesDir && o.ImagesDir.Length > 0)
        {
            string path = Path.GetFullPath(o.ImagesDir);
            return Directory.Exists(path) ? path
                : throw new RpcException(RpcErrno.EINVAL, ExitCode.BadInput, $"images_dir {path}: no such directory");
        }
        throw new RpcException(RpcErrno.EBADRQC, ExitCode.Usage, "neither images_dir_fd nor images_dir was given");
    }

    private string ClientDirectory(int fd, string field)
    {
        string link = $"/proc/{_c.PeerPid}/fd/{fd}";
        string? target = null;
        try
        {
            target = _c.PeerPid > 0 ? new FileInfo(link).LinkTarget : null;
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        if (target is null || !target.StartsWith('/') || !Directory.Exists(target))
            throw new RpcException(RpcErrno.EBADRQC, ExitCode.Usage, $"{field} {fd} is not an open directory of the client (pid {_c.PeerPid})");
        return target;
    }

    /// <summary>Options CRIU has that need parts criu-sharp lacks; accepting them silently would change the result.</summary>
    private static void RefuseMissing(criu_opts o, string what)
    {
        // A lazy restore works as CRIU's does (the lazy-pages daemon is a separate command, as
        // 'criu lazy-pages' is); a lazy dump serves its pages from the command that dumped, which a
        // request cannot hold open here: 'criu-sharp dump --lazy-pages' does it.
        if (o.LazyPages && what != "RESTORE")
            throw new RpcException(RpcErrno.EOPNOTSUPP, ExitCode.Unsupported,
                $"{what} with lazy_pages: a lazy dump serves its pages until the daemon has them all; use 'criu-sharp dump --lazy-pages --address A --port N'");
        if (o.Ps is not null && what == "RESTORE")
            throw new RpcException(RpcErrno.EOPNOTSUPP, ExitCode.Unsupported,
                "RESTORE with ps: restoring from a page server needs lazy restore, which this build lacks");
        if (o.HasLogFile && (o.LogFile.Contains('/') || o.LogFile is "" or "." or ".."))
            throw new RpcException(RpcErrno.EBADRQC, ExitCode.Usage, $"log_file '{o.LogFile}' must be a bare file name (no '/'); it is written in the work directory");
    }

    // ---- requests -------------------------------------------------------------------------------

    private criu_resp Dump(criu_req req, bool preDump)
    {
        var o = Opts(req);
        string what = Name(req.Type);
        RefuseMissing(o, what);
        if (!o.HasPid)
            throw new RpcException(RpcErrno.ESRCH, ExitCode.BadInput,
                $"{what} without opts.pid would dump the client itself (pid {_c.PeerPid}), which is not a task of the simulated machine");
        string images = ImagesDir(o);
        bool notify = o.NotifyScripts && !preDump;
        var options = new DumpOptions
        {
            Pid = o.Pid,
            ImagesDir = images,
            PrevImagesDir = o.HasParentImg && o.ParentImg.Length > 0 ? o.ParentImg : null,
            TrackMem = o.TrackMem,
            AutoDedup = o.AutoDedup,
            // With notifications the tree is killed only after the client has accepted post-dump
            // (criu/cr-dump.c cr_dump_finish: a failed post-dump script leaves the tree running).
            LeaveRunning = !preDump && (o.LeaveRunning || notify),
            LeaveStopped = !preDump && o.LeaveStopped && !notify,
            PreDumpMode = o.HasPreDumpMode && o.PreDumpMode == criu_pre_dump_mode.VmRead ? PreDumpMode.Read : PreDumpMode.Splice,
            TimeoutSeconds = o.HasTimeout ? o.Timeout : DumpOptions.DefaultTimeoutSeconds,
            // As CRIU: with ps set, pagemaps and pages go to that page server; the rest stays local.
            PageServer = o.Ps is { } ps ? new PageServerEndpoint { Address = ps.HasAddress ? ps.Address : "127.0.0.1", Port = ps.Port, Tls = Tls(o) } : null,
        };
        _log.Add($"{what} pid {o.Pid} into {images}{(options.PrevImagesDir is { } p ? $" (parent {p})" : "")} on machine {MachineDir(o)}");
        if (notify && !Notify("pre-dump"))
            throw new RpcException(RpcErrno.ECANCELED, ExitCode.CheckFailed, "the client failed the pre-dump notification; nothing was dumped");
        // CRIU truncates its log when a request starts; ours, left by an earlier attempt into the
        // same directory, would otherwise make the dump refuse the directory as not empty.
        if (o.HasLogFile && !o.HasWorkDirFd && o.LogFile.Length > 0)
            File.Delete(Path.Combine(images, o.LogFile));
        if (RealHost(o))
            return DumpRealHost(req, o, options, preDump, notify);
        using var m = OpenMachine(o);
        if (m.Kernel.FindTask(o.Pid) is not { Alive: true })
            throw new RpcException(RpcErrno.ESRCH, ExitCode.BadInput, $"no process {o.Pid} on the machine {m.Directory}");
        var result = preDump ? Criu.PreDump(m.AsKernelApi(), options) : Criu.Dump(m.AsKernelApi(), options);
        m.Save();
        foreach (var w in result.Warnings)
            _log.Add($"Warn: {w.Message}");
        if (notify)
        {
            // The machine stays locked while the client acts on post-dump, as CRIU keeps the tree frozen.
            if (!Notify("post-dump"))
                throw new RpcException(RpcErrno.ECANCELED, ExitCode.CheckFailed,
                    "the client failed the post-dump notification; the images are complete and the tree keeps running");
            if (o.LeaveStopped)
            {
                m.Kernel.Stop(o.Pid);
                m.Save();
            }
            else if (!o.LeaveRunning)
            {
                KillTree(m.Kernel, o.Pid);
                m.Save();
            }
        }
        LogDumpStats(result.Stats, o.DisplayStats);
        var resp = new criu_resp { Type = req.Type, Success = true };
        if (!preDump)
            resp.Dump = new criu_dump_resp { Restored = false };
        return resp;
    }

    /// <summary>
    /// A process tree of this host, as the CLI's --machine /proc: its memory is read, never written,
    /// and it keeps running whatever leave_running says (a real process is never killed).
    /// </summary>
    private criu_resp DumpRealHost(criu_req req, criu_opts o, DumpOptions options, bool preDump, bool notify)
    {
        using var host = new HostKernel.LinuxHost
        {
            FreezeTimeout = options.TimeoutSeconds == 0 ? HostKernel.Freezer.DefaultTimeout : TimeSpan.FromSeconds(options.TimeoutSeconds),
        };
        if (host.FindTask(o.Pid) is null)
            throw new RpcException(RpcErrno.ESRCH, ExitCode.ProcessGone, $"no process {o.Pid} on this host");
        // Never killed: left running, or stopped (SIGSTOP) when leave_stopped asks.
        options = options with { LeaveRunning = !(!preDump && o.LeaveStopped), LeaveStopped = !preDump && o.LeaveStopped, AutoFallback = TrackerKind.Content, StrictTracker = true };
        var result = preDump ? Criu.PreDump(host, options) : Criu.Dump(host, options);
        _log.Add($"froze the tree with {(host.LastFreezeMethod == HostKernel.FreezeMethod.CgroupFreezer ? "the cgroup v1 freezer" : "SIGSTOP/SIGCONT")}");
        foreach (var w in result.Warnings)
            _log.Add($"Warn: {w.Message}");
        if (!preDump && o.LeaveStopped)
            _log.Add("the dump left the tree stopped (leave_stopped)");
        else if (!preDump && !o.LeaveRunning)
            _log.Add("a real process is never killed: the dump left it running (as leave_running)");
        if (notify && !Notify("post-dump"))
            throw new RpcException(RpcErrno.ECANCELED, ExitCode.CheckFailed,
                "the client failed the post-dump notification; the images are complete and the tree keeps running");
        LogDumpStats(result.Stats, o.DisplayStats);
        var resp = new criu_resp { Type = req.Type, Success = true };
        if (!preDump)
            resp.Dump = new criu_dump_resp { Restored = false };
        return resp;
    }

    private criu_resp Restore(criu_req req)
    {
        var o = Opts(req);
        RefuseMissing(o, "RESTORE");
        string images = ImagesDir(o);
        string dir = MachineDir(o);
        if (RealHost(o))
            throw new RpcException(RpcErrno.EOPNOTSUPP, ExitCode.Unsupported, "RESTORE needs a simulated machine: /proc is the real host, which criu-sharp never writes to");
        _log.Add($"RESTORE from {images} into machine {dir}");
        if (o.NotifyScripts && !Notify("pre-restore"))
            throw new RpcException(RpcErrno.ECANCELED, ExitCode.CheckFailed, "the client failed the pre-restore notification; nothing was restored");
        // A destination that does not exist yet is a freshly booted host with the default profile.
        using var m = SimMachine.Exists(dir) ? SimMachine.Open(dir, _s.LockWait) : SimMachine.Create(dir, new KernelConfig(), _s.LockWait);
        var result = Criu.Restore(m.AsKernelApi(), new RestoreOptions { ImagesDir = images, LeaveStopped = o.LeaveStopped, LazyPages = o.LazyPages });
        // lazy_pages: the lazy pages stay missing until 'criu-sharp lazy-pages' brings them; the
        // machine is marked until then, as restore --lazy-pages marks it.
        if (result.Lazy.Count > 0)
            m.MarkLazyRestore(images, result.Lazy.Select(l => l.Pid));
        m.Save();
        int root = result.Pids[0];
        foreach (var w in result.Warnings)
            _log.Add($"Warn: {w.Message}");
        if (o.NotifyScripts)
        {
            // criu/cr-restore.c: a failed post-restore or pre-resume script kills the restored tree.
            if (!Notify("post-restore", root) || !Notify("pre-resume"))
            {
                KillTree(m.Kernel, root);
                m.Save();
                throw new RpcException(RpcErrno.ECANCELED, ExitCode.CheckFailed, "the client failed a restore notification; the restored tree was killed");
            }
            Notify("post-resume");
        }
        var s = result.Stats;
        _log.Add($"Restore finished successfully: pid {root}, {s.PagesRestored} pages restored, {s.VmasVerified} VMAs verified");
        return new criu_resp { Type = criu_req_type.Restore, Success = true, Restore = new criu_restore_resp { Pid = root } };
    }

    /// <summary>
    /// PAGE_SERVER and PAGE_SERVER_CHLD: a page server (the <c>page-server</c> verb's) receiving
    /// one dump into the images directory, on opts.ps's address and port (0: a free one), answered
    /// with ps{port, pid} once it listens. CRIU forks it as a process; here it is a thread of the
    /// service, and <c>swrk</c> stays until it has served its dump, as CRIU's child would.
    /// </summary>
    private criu_resp PageServer(criu_req req)
    {
        var o = Opts(req);
        if (o.LazyPages)
            throw new RpcException(RpcErrno.EOPNOTSUPP, ExitCode.Unsupported,
                $"{Name(req.Type)} with lazy_pages: lazy (post-copy) restore is not in this build");
        string images = ImagesDir(o);
        var listener = PageServerListener.Start(new PageServerOptions
        {
            ImagesDir = images,
            PrevImagesDir = o.HasParentImg && o.ParentImg.Length > 0 ? o.ParentImg : null,
            Address = o.Ps is { HasAddress: true, Address.Length: > 0 } ? o.Ps.Address : "0.0.0.0",
            Port = o.Ps?.Port ?? 0,
            Tls = Tls(o),
            Sessions = 1,
        });
        int port = listener.Port;
        _log.Add($"{Name(req.Type)}: page server listening on {listener.Address}:{port}, receiving into {images}");
        _s.PageServers.Start(listener, line => diagnostics?.Invoke($"page server :{port}: {line}"));
        return new criu_resp
        {
            Type = req.Type,
            Success = true,
            Ps = new criu_page_server_info { Port = port, Pid = Environment.ProcessId },
        };
    }

    private static PageServerTls? Tls(criu_opts o) => !o.Tls ? null : new PageServerTls
    {
        CaCert = o.HasTlsCacert ? o.TlsCacert : PageServerTls.DefaultCaCert,
        Cert = o.HasTlsCert ? o.TlsCert : PageServerTls.DefaultCert,
        Key = o.HasTlsKey ? o.TlsKey : PageServerTls.DefaultKey,
        NoCnVerify = o.TlsNoCnVerify,
    };

    /// <summary>The kernel a check answers for: the machine's, or a default one when there is no machine yet.</summary>
    private CriuSharp.SimKernel.Kernel CheckedKernel(criu_opts? o)
    {
        string dir = MachineDir(o);
        if (!SimMachine.Exists(dir))
            return new CriuSharp.SimKernel.Kernel(new KernelConfig());
        using var m = SimMachine.Open(dir, _s.LockWait);
        return m.Kernel;
    }

    private CheckResult CheckKernel(criu_opts? o)
    {
        if (!RealHost(o))
            return Criu.Check(new SimKernelAdapter(CheckedKernel(o)));
        using var host = new HostKernel.LinuxHost();
        return Criu.Check(host, TrackerKind.Content);
    }

    private criu_resp Check(criu_req req)
    {
        var c = CheckKernel(req.Opts);
        _log.Add($"CHECK {c.Arch}, kernel {c.KernelVersion}: pre-dumps track writes with {TrackerNames.Name(c.BestTracker)}");
        foreach (var w in c.Warnings)
            _log.Add($"Warn: {w.Message}");
        return new criu_resp { Type = criu_req_type.Check, Success = true };
    }

    /// <summary>
    /// CRIU answers success with every feature present and false unless it was asked for and is
    /// there. mem_track is true when pre-dumps can track writes at all (soft-dirty, PAGEMAP_SCAN or
    /// userfaultfd write-protect); lazy_pages stays false (RESTORE accepts it, but DUMP with
    /// lazy_pages is refused, and CRIU's flag promises both); pidfd_store is not offered.
    /// </summary>
    private criu_resp FeatureCheck(criu_req req)
    {
        var asked = req.Features ?? new criu_features();
        var c = CheckKernel(req.Opts);
        var f = new criu_features
        {
            MemTrack = asked.MemTrack && c.BestTracker != TrackerKind.None,
            LazyPages = false,
            PidfdStore = false,
        };
        return new criu_resp { Type = criu_req_type.FeatureCheck, Success = true, Features = f };
    }

    private static criu_resp Version()
    {
        string info = typeof(RpcSession).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0";
        int plus = info.IndexOf('+');
        var v = new criu_version { MajorNumber = RpcCommands.CriuMajor, MinorNumber = RpcCommands.CriuMinor, Sublevel = 0, Name = $"criu-sharp {(plus < 0 ? info : info[..plus])}" };
        if (plus >= 0)
            v.Gitid = info[(plus + 1)..];
        return new criu_resp { Type = criu_req_type.Version, Success = true, Version = v };
    }

    /// <summary>
    /// waitpid(2) on a task of the machine: a zombie is reaped and its wait status returned; a live
    /// task is looked at again every 200 ms (the machine unlocked in between, so other commands can
    /// run it) until it exits or the client hangs up.
    /// </summary>
    private criu_resp WaitPid(criu_req req)
    {
        if (!req.HasPid)
            throw new RpcException(RpcErrno.EBADRQC, ExitCode.Usage, "WAIT_PID needs pid");
        int pid = (int)req.Pid;
        while (true)
        {
            using (var m = OpenMachine(req.Opts))
            {
                var t = m.Kernel.FindTask(pid);
                if (t is null || t.State == TaskState.Dead)
                    throw new RpcException(RpcErrno.ECHILD, ExitCode.BadInput, $"no process {pid} to wait for on the machine {m.Directory}");
                if (t.State == TaskState.Zombie)
                {
                    int status = t.TermSignal != 0 ? t.TermSignal & 0x7f : (t.ExitCode & 0xff) << 8;
                    m.Kernel.Reap(t);
                    m.Save();
                    return new criu_resp { Type = criu_req_type.WaitPid, Success = true, Status = status };
                }
            }
            if (_c.HasHungUp(TimeSpan.FromMilliseconds(200)))
                throw new RpcDisconnectedException();
        }
    }

    // ---- notifications, logs --------------------------------------------------------------------

    /// <summary>
    /// Sends criu_resp{NOTIFY, script[, pid]} and waits for the client's criu_req{NOTIFY}; false
    /// when the client reports failure or answers with anything else (CRIU's send_criu_rpc_script).
    /// </summary>
    private bool Notify(string script, int? pid = null)
    {
        var n = new criu_notify { Script = script };
        if (pid is int p)
            n.Pid = p;
        if (!_c.Send(new criu_resp { Type = criu_req_type.Notify, Success = true, Notify = n }))
            throw new RpcDisconnectedException();
        var got = _c.Receive();
        if (got.Status == RpcConnection.ReceiveStatus.Closed)
            throw new RpcDisconnectedException();
        bool ok = got.Request is { Type: criu_req_type.Notify, NotifySuccess: true };
        _log.Add($"Notify {script}: {(ok ? "ok" : "failed")}");
        return ok;
    }

    private static void KillTree(CriuSharp.SimKernel.Kernel k, int root)
    {
        var tree = k.Tree(root);
        for (int i = tree.Count - 1; i >= 0; i--)
        {
            k.Exit(tree[i], 0, SimTask.SIGKILL);
            k.Reap(tree[i]);
        }
    }

    private void LogDumpStats(DumpStats s, bool display)
    {
        _log.Add($"Dumping finished successfully: {s.PagesWritten} pages written, {s.PagesSkippedParent} in parent, {s.BytesCompressed} bytes stored ({s.Tracker}, {s.Compression})");
        if (!display)
            return;
        // criu/stats.c display_stats wording.
        _log.Add("Displaying dump stats:");
        _log.Add($"Freezing time: {s.FreezingTime} us");
        _log.Add($"Frozen time: {s.FrozenTime} us");
        _log.Add($"Memory dump time: {s.MemdumpTime} us");
        _log.Add($"Memory write time: {s.MemwriteTime} us");
        _log.Add($"Memory pages scanned: {s.PagesScanned} (0x{s.PagesScanned:x})");
        _log.Add($"Memory pages skipped from parent: {s.PagesSkippedParent} (0x{s.PagesSkippedParent:x})");
        _log.Add($"Memory pages written: {s.PagesWritten} (0x{s.PagesWritten:x})");
        _log.Add($"Lazy memory pages: {s.PagesLazy} (0x{s.PagesLazy:x})");
    }

    /// <summary>
    /// log_file (a bare name) is written in the work directory — work_dir_fd, else the images
    /// directory — after the request, so a dump never finds it in a directory it is about to fill.
    /// </summary>
    private void WriteLog(criu_req req)
    {
        var o = req.Opts;
        if (o is null || !o.HasLogFile || o.LogFile.Length == 0 || o.LogFile.Contains('/') || o.LogFile is "." or ".." || _log.Count == 0)
            return;
        try
        {
            string dir = o.HasWorkDirFd ? ClientDirectory(o.WorkDirFd, "work_dir_fd") : ImagesDir(o);
            File.WriteAllLines(Path.Combine(dir, o.LogFile), _log);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or RpcException)
        {
            diagnostics?.Invoke($"pid {_c.PeerPid}: cannot write log_file {o.LogFile}: {CliApp.FirstLine(e.Message)}");
        }
    }
}

using System.CommandLine;
using System.Text.Json;
using CriuSharp.Dumper;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;
using CriuSharp.Migration;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Cli;

/// <summary>
/// Lazy (post-copy) restore across commands, as CRIU does it with three processes:
/// <code>
///  source:      dump --lazy-pages -D img --address A --port N   dumps, then serves PS_IOV_GET until CLOSE
///  destination: restore --lazy-pages -D img                     lazy VMAs left missing, registered with userfaultfd
///               lazy-pages -D img --page-server --address A --port N
///                                                               runs the machine, serving its faults and draining
/// </code>
/// CRIU's restore hands the userfaultfds to its lazy-pages daemon over a unix socket while the
/// tasks run. A simulated machine runs only inside a command, so here the daemon is the command
/// that runs the destination machine: it finds the descriptors again in the restored tasks, runs
/// the machine in 1 ms periods of virtual time (faults are served at once; what the modelled link
/// can still carry in a period drains pages in address order) until every page has arrived, then
/// closes the session with PS_IOV_CLOSE and saves the machine. The restored tasks must not run in
/// between (a fault with no daemon leaves the thread asleep).
/// </summary>
public static class LazyPagesCommand
{
    /// <summary>
    /// dump --lazy-pages: the dump, then lazy-pages sessions served from the pages it kept. As
    /// CRIU's cr_lazy_mem_dump does, the tree stays as it was (seized, not killed) until a daemon
    /// has every page: only then is it killed and the machine saved. If the session fails, or this
    /// command is killed, the machine is left as it was before the dump and the tree runs on there
    /// (CRIU's cr_dump_finish resumes the tasks when the lazy transfer fails; ptrace-seized tasks
    /// run on when criu dies). The machine stays locked meanwhile.
    /// </summary>
    internal static int DumpAndServe(ParseResult p, CheckpointCommands.DumpArgs a, DumpOptions options)
    {
        if (options.PageServer is not null)
            throw new UserException(ExitCode.Usage, "--lazy-pages and --page-server: the source serves its lazy pages itself (give --address/--port without --page-server)");
        if (options.LeaveStopped)
            throw new UserException(ExitCode.Usage, "--lazy-pages and --leave-stopped: the tree is killed once the daemon has every page (or left running with --leave-running)");
        var store = new LazyPageStore();
        bool leaveRunning = options.LeaveRunning;
        options = options with { LazyPages = store, LeaveRunning = true };
        var o = p.InvocationConfiguration.Output;
        var err = p.InvocationConfiguration.Error;
        bool json = p.GetValue(a.Json);
        string address = p.GetValue(a.Net.Address) is { Length: > 0 } ad ? ad : "0.0.0.0";
        int port = a.Net.ParsedPort(p, allowZero: true);
        var timeout = a.Net.ParsedTimeout(p);
        using var m = a.Machine.Open(p);
        PidOption.Resolve(m.Kernel, options.Pid);
        var result = TerminalProgress.Run(json, "dumping", () => Criu.Dump(m.AsKernelApi(), options));
        foreach (var w in result.Warnings)
            err.WriteLine($"criu-sharp: warning: {w.Message}");
        if (!json)
            CheckpointCommands.Report(o, err, result, options.ImagesDir, false, p.GetValue(a.DisplayStats));
        using var server = LazyPageServer.Start(store, address, port, a.Net.ParsedLayout(p), a.Net.ParsedTls(p));
        if (CrashHook.Installed)
            err.WriteLine($"criu-sharp: crash points before serving: {CrashHook.Hits}");
        o.WriteLine($"listening on {server.Address}:{server.Port}");
        o.Flush();
        bool closed = server.Serve(timeout, out string? why,
            dropped => err.WriteLine($"criu-sharp: lazy-pages: a daemon's connection was dropped ({dropped}); waiting {timeout.TotalSeconds:0.#} s for the next"));
        if (closed)
        {
            // Every page has arrived on the destination: the tree goes now (CRIU's final state).
            if (!leaveRunning)
            {
                var api = m.AsKernelApi();
                foreach (int pid in result.Pids.Reverse())
                    if (api.FindTask(pid) is { Alive: true })
                        api.Exit(pid, 0, KernelApi.Signals.SIGKILL);
            }
            m.Save();
        }
        if (json)
            o.WriteLine(JsonSerializer.Serialize(new
            {
                images_dir = options.ImagesDir,
                pids = result.Pids,
                stats = JsonOut.Stats(result.Stats),
                lazy_pages = store.Pages,
                pages_served = server.PagesServed,
                closed,
                error = why,
                warnings = result.Warnings.Select(w => w.Message),
            }, JsonOut.Options));
        else
            o.WriteLine($"served {server.PagesServed} of {store.Pages} lazy pages{(closed ? "; the daemon closed the session" : "")}");
        if (!closed)
            throw new UserException(ExitCode.Environment, $"lazy-pages session ended before CLOSE: {why}; the tree was left running on the source, unchanged",
                "The destination's lazy restore stops its tree and names the pages it lost; dump again to retry.");
        return 0;
    }

    /// <summary>
    /// run and verify on a machine whose lazy restore has not finished: its tree lacks pages that
    /// only the source can give, so it must not run (or be checked) before lazy-pages brought them.
    /// </summary>
    internal static void RefuseWhileIncomplete(SimMachine m)
    {
        if (m.LazyRestoreBlocksRunning && m.PendingLazyRestore is { } pending)
            throw new UserException(ExitCode.BadImage,
                $"machine {m.Directory}: the lazy restore of {pending.ImagesDir} is incomplete (process {string.Join(' ', pending.Pids)} still lacks lazy pages)",
                $"Run 'criu-sharp lazy-pages -m {m.Directory} -D {pending.ImagesDir} --page-server --address ADDRESS --port PORT' against the source's dump --lazy-pages.");
    }

    public static Command Create()
    {
        var dir = new Option<string>("--images-dir", "-D") { Description = "The images a restore --lazy-pages restored (the PE_LAZY entries say which pages to fetch).", DefaultValueFactory = _ => "." };
        var pageServer = new Option<bool>("--page-server") { Description = "Fetch the pages from the source's page server (dump --lazy-pages) at --address/--port: the only source this build has.", Required = true };
        var bandwidth = new Option<string>("--bandwidth") { Description = "Modelled link in virtual time: what the drain may fetch per period besides the faults.", DefaultValueFactory = _ => "128MiB/s" };
        var rtt = new Option<string>("--rtt") { Description = "Modelled round trip of one page request (fault latency figures).", DefaultValueFactory = _ => $"{MigrationCost.Default.RoundTripNs / 1000}us" };
        var machine = new MachineOptions();
        var net = new PageServerCliOptions();
        var json = CommonOptions.Json();
        var cmd = new Command("lazy-pages",
            "CRIU's lazy-pages daemon for a restore --lazy-pages: runs the destination machine while it fetches each faulting page from the source's page server (PS_IOV_GET) " +
            "and drains the rest in address order, until every page has arrived. If the source is lost first, the restored tree is stopped (SIGKILL), " +
            "the pages that never arrived are listed on stderr and the exit code is 7.");
        foreach (var o in new Option[] { dir, pageServer, bandwidth, rtt, json })
            cmd.Options.Add(o);
        machine.AddTo(cmd);
        net.AddTo(cmd);
        cmd.SetAction(p =>
        {
            string images = Path.GetFullPath(p.GetValue(dir)!);
            if (!Directory.Exists(images))
                throw new UserException(ExitCode.BadInput, $"{images}: no such directory");
            string address = p.GetValue(net.Address) is { Length: > 0 } ad ? ad : throw new UserException(ExitCode.Usage, "--address is required (the source's page server)");
            int port = net.ParsedPort(p, allowZero: false);
            var link = new LazyLinkModel(CommonOptions.ParseDurationNs(p.GetValue(rtt)!), MigrationArgs.ParseRate(p.GetValue(bandwidth)!, "--bandwidth"));
            var o = p.InvocationConfiguration.Output;
            var err = p.InvocationConfiguration.Error;
            using var m = machine.Open(p);
            var api = m.AsKernelApi();
            var tasks = Criu.LazyTasks(api, images, out int arrived);
            using var source = new PageServerLazySource(address, port, net.ParsedTimeout(p), net.ParsedLayout(p), net.ParsedTls(p));
            if (tasks.Count == 0)
            {
                // An earlier daemon brought every page and saved the machine, then stopped before
                // it told the source: finish its work (the source may wait for CLOSE).
                m.ClearLazyRestore();
                source.Close();
                o.WriteLine($"every lazy page of {arrived} process(es) had already arrived{(source.ConnectError is null ? "; closed the source's session" : "")}");
                return 0;
            }
            using var daemon = new LazyPagesDaemon(api, source, tasks, link);
            ulong elapsed = PostCopyPeriods.Run(daemon, m.Kernel, m.Advance, tasks, link);
            // The machine holding every page is saved before the mark goes and before the source
            // may drop its copies (CLOSE): a kill anywhere here leaves a rerun something to finish.
            m.Save();
            if (daemon.Complete && daemon.VerifyError is null)
                m.ClearLazyRestore();
            if (daemon.Complete)
                source.Close();
            var st = daemon.Stats;
            if (daemon.Failed)
            {
                foreach (var (pid, va, pages) in daemon.LostRanges.Take(20))
                    err.WriteLine($"criu-sharp: lost: process {pid} 0x{va:x}-0x{va + (pages << PageGeometry.PageShift):x} ({pages} pages)");
                if (daemon.LostRanges.Count > 20)
                    err.WriteLine($"criu-sharp: lost: ... {daemon.LostRanges.Count - 20} more ranges");
                throw new UserException(ExitCode.Environment, (source.ConnectError is { } ce ? ce + "; " : "") + daemon.Error,
                    "The source's page server (dump --lazy-pages) must keep running until the daemon has every page.");
            }
            if (!daemon.Complete)
                throw new UserException(ExitCode.Internal, "the lazy-pages daemon stopped with pages remaining");
            if (p.GetValue(json))
                o.WriteLine(JsonSerializer.Serialize(new
                {
                    images_dir = images,
                    machine = m.Directory,
                    pids = tasks.Select(t => t.Pid),
                    faults = st.Faults,
                    pages_by_fault = st.PagesByFault,
                    pages_by_drain = st.PagesByDrain,
                    zero_pages = st.ZeroPages,
                    fault_latency_mean_ns = st.FaultLatencyMeanNs,
                    fault_latency_p50_ns = st.FaultLatencyP50Ns,
                    fault_latency_p99_ns = st.FaultLatencyP99Ns,
                    fault_latency_max_ns = st.FaultLatencyMaxNs,
                    last_page_ns = elapsed,
                    vmas_verified = daemon.VmasVerified,
                    pages_dropped = st.PagesDropped,
                    pages_remapped = st.PagesRemapped,
                    uffd_events = st.Events,
                    vmas_changed_by_task = st.VmasChangedByTask,
                    verify_error = daemon.VerifyError,
                }, JsonOut.Options));
            else
                o.WriteLine($"lazy pages: {st.PagesByFault} by {st.Faults} faults, {st.PagesByDrain} by the drain, {st.ZeroPages} zero-filled; fault wait median {st.FaultLatencyP50Ns / 1e6:0.###} ms, p99 {st.FaultLatencyP99Ns / 1e6:0.###} ms; last page {elapsed / 1e6:0.##} ms after start; {daemon.VmasVerified} VMA checksums {(daemon.VerifyError is null ? "ok" : "FAILED: " + daemon.VerifyError)}"
                    + (st.Events > 0 ? $"; {st.Events} uffd events: {st.PagesDropped} lazy pages unmapped or discarded by the task, {st.PagesRemapped} moved, {st.VmasChangedByTask} VMA checksums left uncompared" : ""));
            return daemon.VerifyError is null ? 0 : (int)ExitCode.CheckFailed;
        });
        return cmd;
    }
}

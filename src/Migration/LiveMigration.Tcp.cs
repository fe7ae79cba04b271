using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using CriuSharp.Dumper;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Migration;

/// <summary>
/// <c>--transport tcp</c>: the same loop with the destination in another process, as P.Haul drives
/// p.haul-service, and every transfer measured on the wall clock instead of modelled:
/// <code>
///  source (this process)                                destination (migrate-service)
///  hello ─────────────────────────────────────────────▶ DIR marked incomplete
///  per pre-dump i:  page_server i ─────────────────────▶ page server for DIR/i (parent ../i-1), port
///                   pre-dump --page-server ═══ pages ══▶ pagemap/pages images of DIR/i
///                   images i + the other images ──────▶ DIR/i complete; pre-loaded (--preload)
///  final dump: precopy as a pre-dump, frozen; postcopy/hybrid: lazy, all its images over "images"
///  fs + the source's regular files ───────────────────▶ kept for the restore
///  restore n [lazy: source's page server A:P] ────────▶ restore DIR/n into its machine; lazily: GET ◀══ pages
///             ◀── measured restore time, post-copy figures, verification; the source tree is then killed
/// </code>
/// The source's tree is left stopped after the final dump and killed only once the destination
/// reports a verified restore; when the destination is lost or fails, the tree is resumed and runs on.
/// </summary>
public sealed partial class LiveMigration
{
    private string? _warmUpWarning;

    private MigrationResult RunTcp(string root, bool temporary)
    {
        var t = _o.Tcp!;
        var source = new LiveHost(new Kernel(_o.Kernel));
        int pid = SpawnTree(source);
        source.Advance(_o.WarmupNs);
        // The source's warm-up runs while the destination starts and warms its own.
        var warm = t.WarmUp ? Task.Run(() => CodeWarmup.Run(_o)) : null;
        try
        {
            using var dest = TcpDestination.Open(t);
            try
            {
                dest.Hello(new ControlRequest
                {
                    Mode = _o.Mode.ToString().ToLowerInvariant(),
                    WarmUp = t.WarmUp,
                    ElideUnchanged = _o.ElideUnchanged,
                    DeltaCacheBytes = _o.DeltaCacheBytes,
                    Cmd = "hello",
                    Version = MigrationChannel.ProtocolVersion,
                    Kernel = KernelSpec.Of(_o.Kernel),
                    Compression = CompressionName(_o.PageStore),
                    BlockPages = _o.PageStore.BlockPages,
                    Preload = _o.Preload,
                    DecompressBytesPerSecond = _o.Cost.DecompressBytesPerSecond,
                    CopyBytesPerSecond = _o.Cost.CopyBytesPerSecond,
                });
                if (warm is not null && warm.Result.Error is { } why)
                    _warmUpWarning = $"the source's warm-up failed ({why}); the downtime may include compilation";
                var result = MigrateOver(dest, source, pid, root, temporary);
                dest.Close();
                return result;
            }
            catch (Exception e) when (e is MigrationTransportException or PageServerException or IOException or SocketException
                                          or DumperException { InnerException: PageServerException or IOException })
            {
                var lost = e is MigrationTransportException m ? m : dest.Lost(e);
                throw new MigrationTransportException(lost.Message + "; " + ResumeSource(source, pid), lost.InnerException);
            }
        }
        finally
        {
            // A destination that could not be reached leaves the warm-up running: it ends before the
            // migration returns (it only ever reports what failed, it never throws).
            warm?.Wait();
        }
    }

    private static string CompressionName(PageStoreOptions s) => s.Compression switch
    {
        PageCompression.Lz4 => "lz4",
        PageCompression.Zstd => "zstd",
        _ => "none",
    };

    private int SpawnTree(LiveHost source)
    {
        var tasks = WorkloadApi.Spawn(source.Kernel, _o.WorkloadPath);
        if (tasks.Count == 0)
            throw new DumperException("the workload starts no process");
        int pid = tasks[0].Pid;
        var tree = source.Kernel.Tree(pid).Select(x => x.Pid).ToHashSet();
        var outside = tasks.Where(x => !tree.Contains(x.Pid)).Select(x => x.Pid).ToList();
        if (outside.Count > 0)
            throw new DumperException($"the workload starts {outside.Count + 1} separate process trees; migrate moves one tree, as criu dump -t does (processes {string.Join(", ", outside)} are not children of {pid})");
        return pid;
    }

    /// <summary>
    /// After a failed migration the source's tree runs on, as CRIU resumes a tree whose dump
    /// failed: a tree left stopped by the final dump gets SIGCONT; then it runs 10 ms and checks itself.
    /// </summary>
    private static string ResumeSource(LiveHost source, int pid)
    {
        var tree = source.Kernel.Tree(pid).Where(x => x.Alive).ToList();
        if (tree.Count == 0)
            return "the source tree is gone";
        foreach (var x in tree)
            source.Kernel.Continue(x.Pid);
        source.Advance(10_000_000);
        var checks = tree.Select(x => WorkloadApi.Verify(x)).ToList();
        return checks.All(c => c.Ok)
            ? $"the source tree ({string.Join(' ', tree.Select(x => x.Pid))}) keeps running on the source (self-check ok after 10 ms)"
            : $"the source tree runs on but its self-check failed: {checks.First(c => !c.Ok).Detail}";
    }

    private PageServerEndpoint Endpoint(TcpDestination dest, int port) => new()
    {
        Address = dest.Address,
        Port = port,
        IoTimeout = _o.Tcp!.IoTimeout,
        Tls = _o.Tcp.Tls,
        // Compressed pages travel as compressed blocks (CRIU's page server sends what its page
        // pipe holds; ours sends the blocks the images would store).
        WireCompression = _o.PageStore.Compression == PageCompression.None ? null : _o.PageStore,
    };

    /// <summary>Sends every image of <paramref name="dir"/> the page server did not receive; returns the answer, the wall time and the bytes.</summary>
    private static (ControlReply Ack, ulong Ns, long Bytes) SendImages(TcpDestination dest, int index, string dir, bool final)
    {
        var files = new DirectoryInfo(dir).EnumerateFiles()
            .Where(f => f.LinkTarget is null && !f.Name.StartsWith('.'))
            .OrderBy(f => f.Name, StringComparer.Ordinal)
            .ToList();
        var sw = Stopwatch.StartNew();
        var ack = dest.Call(new ControlRequest { Cmd = "images", Index = index, Final = final, Files = files.Select(f => new FileEntry(f.Name, f.Length)).ToList() },
            files.Select(f => (f.Name, f.FullName)).ToList(), filesInto: dir);
        return (ack, Ns(sw.Elapsed), files.Sum(f => f.Length));
    }

    /// <summary>The source's regular files, for the destination's file mappings (see <see cref="ShareStorage"/>).</summary>
    private static ulong SendFs(TcpDestination dest, Kernel source, string scratch)
    {
        var entries = new List<FileEntry>();
        var paths = new List<string>();
        var files = new List<(string, string)>();
        Directory.CreateDirectory(scratch);
        foreach (var f in source.Fs.Files.ToList())
        {
            if (f.IsShmem || f.IsHugetlb || f.Unlinked)
                continue;
            var contents = new byte[f.Size];
            source.Fs.Read(f, 0, contents);
            string tmp = Path.Combine(scratch, files.Count.ToString(CultureInfo.InvariantCulture));
            File.WriteAllBytes(tmp, contents);
            entries.Add(new FileEntry(files.Count.ToString(CultureInfo.InvariantCulture), contents.Length));
            paths.Add(f.Path);
            files.Add((files.Count.ToString(CultureInfo.InvariantCulture), tmp));
        }
        try
        {
            var sw = Stopwatch.StartNew();
            dest.Call(new ControlRequest { Cmd = "fs", Files = entries, Paths = paths }, files);
            return Ns(sw.Elapsed);
        }
        finally
        {
            Directory.Delete(scratch, true);
        }
    }

    private static ulong Ns(TimeSpan t) => (ulong)Math.Max(0, t.Ticks) * 100;

    private MigrationResult MigrateOver(TcpDestination dest, LiveHost source, int pid, string root, bool temporary)
    {
        _history = _o.ElideUnchanged || _o.DeltaCacheBytes > 0 ? new SentPages(_o.ElideUnchanged, _o.DeltaCacheBytes) : null;
        var warnings = new List<string>();
        if (_warmUpWarning is not null)
            warnings.Add(_warmUpWarning);
        var iterations = new List<IterationRecord>();
        var samples = new List<IterationSample>();
        int maxSteps = _o.Policy.MaxPreDumps + 3;
        ulong? prevFreezeAt = null;
        ulong firstFreezeAt = source.Kernel.UptimeNs;
        // The policy sees the link as measured: the last iteration's bytes over its transfer time
        // (the configured bandwidth until one has been measured).
        double bandwidth = _o.Cost.LinkBytesPerSecond;
        ulong measuredBytes = 0, measuredNs = 0;
        string stopReason = "post-copy: no pre-dumps";
        ulong remaining = 0;
        bool lazy = _o.Mode != MigrationMode.Precopy;

        // ---- pre-dump iterations under the policy ------------------------------------------------
        while (_o.Mode != MigrationMode.Postcopy)
        {
            remaining = samples.Count == 0 ? ResidentBytes(source.Kernel, pid) : samples[^1].BytesSent;
            var decision = _o.Policy.Decide(new PolicyInput { Done = samples, BandwidthBytesPerSecond = bandwidth, RemainingBytes = remaining });
            if (iterations.Count > 0)
            {
                iterations[^1] = iterations[^1] with { Decision = (decision.Stop ? "stop: " : "continue: ") + decision.Reason };
                _o.IterationDone?.Invoke(iterations[^1]);
            }
            if (decision.Stop)
            {
                stopReason = decision.Reason;
                break;
            }
            int index = iterations.Count + 1;
            string dir = Path.Combine(root, index.ToString(CultureInfo.InvariantCulture));
            int port = dest.Call(new ControlRequest { Cmd = "page_server", Index = index }).Port;
            ulong freezeAt = source.Kernel.UptimeNs;
            var r = Criu.PreDump(source.AsKernelApi(), DumpOptionsFor(pid, dir, index) with { PageServer = Endpoint(dest, port) });
            Collect(warnings, r);
            var (ack, copyNs, fileBytes) = SendImages(dest, index, dir, final: false);
            // A pre-dump sends its pages after the thaw (its write phase), then the other images.
            ulong transferNs = Ns(r.Stats.WallClock?.Write ?? TimeSpan.Zero) + copyNs;
            ulong sent = (ulong)(ack.PageBytesReceived + fileBytes);
            measuredBytes += sent;
            measuredNs += transferNs;
            if (measuredNs > 0)
                bandwidth = measuredBytes / (measuredNs / 1e9);
            // The tree runs on while its images cross (virtual time follows the measured transfer).
            source.Advance(transferNs);
            iterations.Add(Record(index, "pre-dump", dir, r.Stats, sent, transferNs, source.Kernel.UptimeNs - freezeAt, freezeAt, prevFreezeAt)
                with
            { PageBytesOnWire = ack.PageBytesReceived });
            samples.Add(new IterationSample(r.Stats.PagesWritten, r.Stats.PagesScanned, sent));
            prevFreezeAt = freezeAt;
            Report($"pre-dump {index}", iterations.Count, maxSteps);
            if (iterations.Count > 10_000)
                throw new DumperException($"policy {_o.Policy.Spec} did not stop after 10000 pre-dumps");
        }
        if (iterations.Count == 0)
            firstFreezeAt = source.Kernel.UptimeNs;

        // ---- final dump: frozen from here until the destination resumes --------------------------
        int finalIndex = iterations.Count + 1;
        string finalDir = Path.Combine(root, finalIndex.ToString(CultureInfo.InvariantCulture));
        ulong finalFreezeAt = source.Kernel.UptimeNs;
        var lazyStore = lazy ? new LazyPageStore() : null;
        // A lazy dump keeps its private pages on the source and writes the rest locally (CRIU's
        // dump --lazy-pages serves them itself); a pre-copy dump streams its pages to a page server.
        PageServerEndpoint? ep = lazy ? null : Endpoint(dest, dest.Call(new ControlRequest { Cmd = "page_server", Index = finalIndex }).Port);
        var dumpWatch = Stopwatch.StartNew();
        var jitBefore = System.Runtime.JitInfo.GetCompilationTime(currentThread: true);
        // Left stopped, not killed: the tree is killed once the destination has verified its restore.
        var dump = Criu.Dump(source.AsKernelApi(), DumpOptionsFor(pid, finalDir, finalIndex) with { TrackMem = true, LazyPages = lazyStore, LeaveStopped = true, PageServer = ep });
        ulong frozenNs = Ns(dumpWatch.Elapsed);
        Collect(warnings, dump);
        var (finalAck, finalCopyNs, finalFileBytes) = SendImages(dest, finalIndex, finalDir, final: true);
        ulong fsNs = SendFs(dest, source.Kernel, Path.Combine(Path.GetTempPath(), "criu-sharp-fs-" + Guid.NewGuid().ToString("N")));
        ulong finalTransferNs = finalCopyNs + fsNs;
        ulong sourceJitNs = Ns(System.Runtime.JitInfo.GetCompilationTime(currentThread: true) - jitBefore);
        ulong finalSent = (ulong)(finalAck.PageBytesReceived + finalFileBytes);
        iterations.Add(Record(finalIndex, "dump", finalDir, dump.Stats, finalSent, finalTransferNs, frozenNs + finalTransferNs, finalFreezeAt, prevFreezeAt)
            with
        { PageBytesOnWire = lazy ? null : finalAck.PageBytesReceived, FrozenNs = frozenNs });
        _o.IterationDone?.Invoke(iterations[^1]);
        Report("final dump", iterations.Count, maxSteps);

        // ---- restore on the destination -----------------------------------------------------------
        ulong arrival = Math.Max(source.Kernel.UptimeNs, finalFreezeAt + frozenNs + finalTransferNs);
        LazyPageServer? lazyServer = null;
        Task<(bool, string?)>? serving = null;
        if (lazyStore is not null)
        {
            lazyServer = LazyPageServer.Start(lazyStore, dest.LocalAddress.ToString(), 0, tls: _o.Tcp!.Tls);
            var s = lazyServer;
            serving = Task.Run(() =>
            {
                try
                {
                    bool closed = s.Serve(_o.Tcp!.IoTimeout, out string? why);
                    return (closed, why);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException)
                {
                    return (false, (string?)e.Message);
                }
            });
        }
        DestinationRestore dr;
        try
        {
            dr = dest.Call(new ControlRequest
            {
                Cmd = "restore",
                Index = finalIndex,
                Lazy = lazy,
                ArrivalNs = arrival,
                ContinueNs = _o.ContinueNs,
                LazyAddress = lazyServer?.Address,
                LazyPort = lazyServer?.Port ?? 0,
            }).Restore ?? throw new MigrationTransportException("the destination answered restore without its result");
        }
        finally
        {
            lazyServer?.Dispose();
            try { serving?.Wait(TimeSpan.FromSeconds(10)); } catch (AggregateException) { }
        }
        Report("restore", iterations.Count + 1, maxSteps);
        warnings.AddRange(dr.Warnings);

        var restoreStats = dr.Stats ?? new RestoreStats();
        PostCopyResult? postCopy = dr.PostCopy is { } pc
            ? new PostCopyResult { Stats = pc.Stats, LazyPages = pc.LazyPages, LastPageNs = pc.LastPageWallNs, Error = pc.Error, Measured = true }
            : null;
        var verification = new Verification
        {
            ChecksumsOk = dr.Error is null && dr.AfterRestore.Count > 0,
            VmasVerified = dr.VmasVerified,
            Error = dr.Error,
            AfterRestore = dr.AfterRestore,
            AfterContinue = dr.AfterContinue,
        };
        // The destination runs the tree now: the source's copy goes (CRIU's dump kills the tree
        // unless told otherwise); a failed restore leaves the source's tree to run on instead.
        if (verification.Ok)
        {
            foreach (var x in source.Kernel.Tree(pid).Where(x => x.Alive).ToList())
                source.Kernel.Exit(x, 0, 9);
        }
        else
        {
            warnings.Add(ResumeSource(source, pid));
        }
        Report("verify", iterations.Count + 2, maxSteps);

        var downtime = new Downtime(frozenNs, finalTransferNs, dr.RestoreWallNs) { JitNs = sourceJitNs + dr.JitNs };
        return new MigrationResult
        {
            Mode = _o.Mode,
            Transport = "tcp",
            Destination = new DestinationInfo(dest.Address, dest.Port, dest.KeepsDestinationDir ? dest.ImagesRoot : null, dest.KeepsDestinationDir ? dest.Machine : null, dest.ProcessId, _o.Tcp!.Tls is not null),
            PostCopy = postCopy,
            Workload = _o.WorkloadPath,
            Policy = _o.Policy.Spec,
            Compression = dump.Stats.Compression,
            BlockKiB = _o.PageStore.Compression == PageCompression.None ? 4 : _o.PageStore.BlockPages * 4,
            Tracker = dump.Stats.Tracker,
            Arch = source.Kernel.Arch.Name,
            Kernel = source.Kernel.Version.Name,
            BandwidthBytesPerSecond = bandwidth,
            Iterations = iterations,
            StopReason = stopReason,
            Downtime = downtime,
            ExpectedDowntimeNs = QemuPolicy.ExpectedDowntimeNs(remaining, bandwidth),
            RemainingBytesAtDecision = remaining,
            TotalTimeNs = finalFreezeAt + downtime.TotalNs - firstFreezeAt,
            Restore = restoreStats,
            Verification = verification,
            ImagesRoot = temporary ? null : root,
            Warnings = warnings.Distinct().ToList(),
            ElideUnchanged = _o.ElideUnchanged,
            DeltaCacheBytes = _o.DeltaCacheBytes,
        };
    }
}

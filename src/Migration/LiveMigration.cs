using System.Globalization;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Migration;

/// <summary>
/// One live migration in one process, P.Haul's loop over two in-memory hosts:
/// <code>
///  source LiveHost: spawn ─▶ warm up ─▶ [policy? ─▶ pre-dump DIR/i (parent ../i-1) ─▶ send DIR/i]* ─▶ dump DIR/n (frozen)
///                                          the workload runs during each pre-dump's write and send
///  link:            each directory's files cross at the modelled bandwidth (virtual time)
///  destination:     clock synchronised ─▶ restore DIR/n (follows parent links) ─▶ verify ─▶ run on ─▶ verify
/// </code>
/// The image directories stand for the images as transferred: the destination reads the same
/// files the source wrote, after the modelled transfer time has passed.
/// </summary>
public sealed partial class LiveMigration
{
    private readonly MigrationOptions _o;
    private readonly CostModel _dumperCost;

    public LiveMigration(MigrationOptions options)
    {
        _o = WithHugetlbPool(options);
        _dumperCost = options.Cost.ToDumperCost();
    }

    /// <summary>
    /// migrate boots both machines itself, so it gives them the hugetlb pool the workload's
    /// MAP_HUGETLB mappings take (as a host booted with hugepages=N would have), unless the
    /// configuration already has more; the destination gets the same configuration. A workload
    /// that does not parse is left to the spawn, which reports it.
    /// </summary>
    private static MigrationOptions WithHugetlbPool(MigrationOptions o)
    {
        var probe = new Kernel(o.Kernel);
        long need;
        try
        {
            need = WorkloadSpec.Load(probe, o.WorkloadPath).HugetlbPages(probe.Hugetlb.Default.Size);
        }
        catch (WorkloadException)
        {
            return o;
        }
        return need > o.Kernel.HugePages ? o with { Kernel = o.Kernel with { HugePages = need } } : o;
    }

    /// <summary>Runs the migration with <paramref name="options"/>.</summary>
    public static MigrationResult Run(MigrationOptions options) => new LiveMigration(options).Run();

    public MigrationResult Run()
    {
        string root = PrepareRoot(out bool temporary);
        try
        {
            return _o.Tcp is null ? RunIn(root, temporary) : RunTcp(root, temporary);
        }
        finally
        {
            if (temporary)
                try { Directory.Delete(root, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    private string PrepareRoot(out bool temporary)
    {
        temporary = _o.ImagesRoot is null;
        if (temporary)
        {
            string tmp = Path.Combine(Path.GetTempPath(), "criu-sharp-migrate-" + Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(tmp);
            return tmp;
        }
        string dir = Path.GetFullPath(_o.ImagesRoot!);
        if (Directory.Exists(dir) && Directory.EnumerateFileSystemEntries(dir).Any())
        {
            // Only a previous migrate's output (its summary file and numbered directories) is
            // replaced; anything else in the directory is the user's and stops us.
            bool ours = File.Exists(Path.Combine(dir, SummaryFile))
                        && Directory.EnumerateFileSystemEntries(dir).All(e =>
                            Path.GetFileName(e) == SummaryFile || (Directory.Exists(e) && int.TryParse(Path.GetFileName(e), NumberStyles.None, CultureInfo.InvariantCulture, out _)));
            if (!ours)
                throw new DumperException($"images directory is not empty and is not a previous migrate's output ({SummaryFile} and numbered directories)", null, dir);
            foreach (var e in Directory.EnumerateFileSystemEntries(dir).ToList())
            {
                if (Directory.Exists(e)) Directory.Delete(e, true);
                else File.Delete(e);
            }
        }
        Directory.CreateDirectory(dir);
        return dir;
    }

    /// <summary>The summary a kept images directory carries (written by the CLI), marking it as ours.</summary>
    public const string SummaryFile = "migration.json";

    private MigrationResult RunIn(string root, bool temporary)
    {
        var source = new LiveHost(new Kernel(_o.Kernel));
        var tasks = WorkloadApi.Spawn(source.Kernel, _o.WorkloadPath);
        if (tasks.Count == 0)
            throw new DumperException("the workload starts no process");
        int pid = tasks[0].Pid;
        var tree = source.Kernel.Tree(pid).Select(t => t.Pid).ToHashSet();
        var outside = tasks.Where(t => !tree.Contains(t.Pid)).Select(t => t.Pid).ToList();
        if (outside.Count > 0)
            throw new DumperException($"the workload starts {outside.Count + 1} separate process trees; migrate moves one tree, as criu dump -t does (processes {string.Join(", ", outside)} are not children of {pid})");
        source.Advance(_o.WarmupNs);

        _history = _o.ElideUnchanged || _o.DeltaCacheBytes > 0 ? new SentPages(_o.ElideUnchanged, _o.DeltaCacheBytes) : null;
        var warnings = new List<string>();
        var iterations = new List<IterationRecord>();
        var samples = new List<IterationSample>();
        int maxSteps = _o.Policy.MaxPreDumps + 3;
        ulong? prevFreezeAt = null;
        ulong firstFreezeAt = source.Kernel.UptimeNs;
        double bandwidth = _o.Cost.LinkBytesPerSecond;
        string stopReason;
        ulong remaining;

        // ---- pre-dump iterations under the policy ------------------------------------------------
        var preloaded = _o.Preload ? new PreloadedPages() : null;
        bool lazy = _o.Mode != MigrationMode.Precopy;
        stopReason = "post-copy: no pre-dumps";
        remaining = 0;
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
            ulong freezeAt = source.Kernel.UptimeNs;
            var r = Criu.PreDump(source.AsKernelApi(), DumpOptionsFor(pid, dir, index));
            Collect(warnings, r);
            ulong sent = DirectoryBytes(dir);
            ulong transferNs = _o.Cost.TransferNs(sent);
            // The tree runs on while the images cross the link (P.Haul's page server).
            source.Advance(transferNs);
            // The destination applies it while the source runs the next iteration.
            preloaded?.Apply(dir);
            iterations.Add(Record(index, "pre-dump", dir, r.Stats, sent, transferNs, source.Kernel.UptimeNs - freezeAt, freezeAt, prevFreezeAt));
            samples.Add(new IterationSample(r.Stats.PagesWritten, r.Stats.PagesScanned, sent));
            prevFreezeAt = freezeAt;
            if (firstFreezeAt > freezeAt) firstFreezeAt = freezeAt;
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
        // Post-copy and hybrid: a lazy dump (CRIU's dump --lazy-pages) keeps the private pages on
        // the source, whose page server answers the destination's requests for them.
        var lazyStore = lazy ? new LazyPageStore() : null;
        var dump = Criu.Dump(source.AsKernelApi(), DumpOptionsFor(pid, finalDir, finalIndex) with { TrackMem = true, LazyPages = lazyStore });
        Collect(warnings, dump);
        ulong finalSent = DirectoryBytes(finalDir);
        ulong finalTransferNs = _o.Cost.TransferNs(finalSent);
        ulong frozenNs = (ulong)dump.Stats.FrozenTime * 1000;
        iterations.Add(Record(finalIndex, "dump", finalDir, dump.Stats, finalSent, finalTransferNs, frozenNs + finalTransferNs, finalFreezeAt, prevFreezeAt));
        _o.IterationDone?.Invoke(iterations[^1]);
        Report("final dump", iterations.Count, maxSteps);

        // ---- restore on the destination -----------------------------------------------------------
        // The destination's clock reads the same virtual time as the source's (synchronised
        // hosts): the restored programs' schedule is absolute time, so they resume where the
        // source left them once the images have arrived.
        var dest = new LiveHost(new Kernel(_o.Kernel));
        ShareStorage(source.Kernel, dest.Kernel);
        ulong arrival = finalFreezeAt + frozenNs + finalTransferNs;
        if (arrival > dest.Kernel.UptimeNs)
            dest.Kernel.AdvanceClock(arrival - dest.Kernel.UptimeNs);
        RestoreStats restoreStats = new();
        IReadOnlyList<LazyTask> lazyTasks = [];
        string? restoreError = null;
        IReadOnlyList<int> restored = [];
        try
        {
            var rr = Criu.Restore(dest.AsKernelApi(), new RestoreOptions { ImagesDir = finalDir, Verify = true, Cost = _dumperCost, Preloaded = preloaded, LazyPages = lazy });
            restoreStats = rr.Stats;
            restored = rr.Pids;
            lazyTasks = rr.Lazy;
            warnings.AddRange(rr.Warnings.Select(w => w.Message));
        }
        catch (DumperException e)
        {
            // A checksum mismatch (or an image the destination cannot use) fails verification,
            // it is the result this command exists to report.
            restoreError = e.Message;
        }
        ulong restoreNs = (ulong)restoreStats.RestoreTime * 1000;
        Report("restore", iterations.Count + 1, maxSteps);

        // ---- post-copy: the tree runs while its lazy pages arrive --------------------------------
        PostCopyResult? postCopy = null;
        int vmasVerified = restoreStats.VmasVerified;
        if (lazy && restoreError is null)
        {
            (postCopy, restoreError, int lazyVerified) = RunPostCopy(dest, lazyStore!, lazyTasks);
            vmasVerified += lazyVerified;
        }

        // A lazy restore whose source was lost stopped (and reaped) the tree.
        VerifyReport Check(int p) => dest.Kernel.FindTask(p) is { } t ? WorkloadApi.Verify(t)
            : new VerifyReport(p, "none", false, 0, null, "the task is gone: it was stopped because its lazy pages never arrived");
        var afterRestore = restored.Select(Check).ToList();
        IReadOnlyList<VerifyReport> afterContinue = [];
        if (restoreError is null)
        {
            dest.Advance(_o.ContinueNs);
            afterContinue = restored.Select(Check).ToList();
        }
        Report("verify", iterations.Count + 2, maxSteps);

        var downtime = new Downtime(frozenNs, finalTransferNs, restoreNs);
        return new MigrationResult
        {
            Mode = _o.Mode,
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
            Verification = new Verification
            {
                ChecksumsOk = restoreError is null,
                VmasVerified = vmasVerified,
                Error = restoreError,
                AfterRestore = afterRestore,
                AfterContinue = afterContinue,
            },
            ImagesRoot = temporary ? null : root,
            Warnings = warnings.Distinct().ToList(),
            ElideUnchanged = _o.ElideUnchanged,
            DeltaCacheBytes = _o.DeltaCacheBytes,
        };
    }

    /// <summary>
    /// The two hosts share their storage, as P.Haul assumes for a process tree (p.haul
    /// phaul/p_haul_pid.py migrates no filesystem: its fs driver is fs_haul_shared) and as CRIU's
    /// restore expects: files.img names a mapped file by path and size, it holds none of its
    /// contents, and the pages of a MAP_SHARED file mapping are not dumped (they are the file's).
    /// With the tree frozen after the final dump, the destination sees every regular file as the
    /// source's page cache holds it.
    /// </summary>
    private static void ShareStorage(Kernel source, Kernel dest)
    {
        foreach (var f in source.Fs.Files.ToList())
        {
            if (f.IsShmem || f.IsHugetlb || f.Unlinked || dest.Fs.Lookup(f.Path) is not null)
                continue;
            var contents = new byte[f.Size];
            source.Fs.Read(f, 0, contents);
            dest.Fs.Create(f.Path, contents);
        }
    }

    /// <summary>
    /// The post-copy phase: the restored tree runs in periods of virtual time; its faults fetch pages
    /// from the source at once (the daemon's monitor), and what the link can still carry in each
    /// period drains the remaining pages in address order, until none is left or the source is lost.
    /// </summary>
    private (PostCopyResult, string?, int) RunPostCopy(LiveHost dest, LazyPageStore store, IReadOnlyList<LazyTask> tasks)
    {
        var link = _o.Cost.LazyLink();
        long lazyPages = store.Pages;
        using var daemon = new LazyPagesDaemon(dest.AsKernelApi(), new StoreLazyPageSource(store), tasks, link);
        ulong elapsed = PostCopyPeriods.Run(daemon, dest.Kernel, dest.Advance, tasks, link, beforePeriod: at =>
        {
            if (_o.SourceLostAfterNs is ulong lostAt && at >= lostAt)
                store.Lose();
        });
        var result = new PostCopyResult { Stats = daemon.Stats, LazyPages = lazyPages, LastPageNs = elapsed, Error = daemon.Error };
        if (!daemon.Complete && daemon.Error is null)
            return (result, "post-copy did not finish: lazy pages remain", 0);
        return (result, daemon.Error ?? daemon.VerifyError, daemon.VmasVerified);
    }

    private DumpOptions DumpOptionsFor(int pid, string dir, int index) => new()
    {
        Pid = pid,
        ImagesDir = dir,
        // CRIU's rule: the parent path is relative to the images directory; P.Haul uses ../N-1.
        PrevImagesDir = index > 1 ? "../" + (index - 1).ToString(CultureInfo.InvariantCulture) : null,
        Tracker = _o.Tracker,
        PageStore = _o.PageStore,
        Cost = _dumperCost,
        History = _history,
    };

    private SentPages? _history;

    private static IterationRecord Record(int index, string kind, string dir, DumpStats s, ulong sent, ulong transferNs, ulong durationNs, ulong freezeAt, ulong? prevFreezeAt) => new()
    {
        Index = index,
        Kind = kind,
        ImagesDir = dir,
        PagesScanned = s.PagesScanned,
        PagesWritten = s.PagesWritten,
        PagesSkippedParent = s.PagesSkippedParent,
        BytesRaw = s.BytesRaw,
        BytesCompressed = s.BytesCompressed,
        BytesSent = sent,
        FrozenNs = (ulong)s.FrozenTime * 1000,
        TransferNs = transferNs,
        DurationNs = durationNs,
        // Pages found dirty by this dump were written since the previous dump's collection.
        DirtyRatePagesPerSecond = prevFreezeAt is ulong p && freezeAt > p ? s.PagesWritten / ((freezeAt - p) / 1e9) : null,
        Stats = s with { WallClock = null },
    };

    private void Report(string step, int done, int max) => _o.Progress?.Invoke(new MigrationProgress(step, done, Math.Max(max, done)));

    private static void Collect(List<string> warnings, DumpResult r) => warnings.AddRange(r.Warnings.Select(w => w.Message));

    /// <summary>Bytes of every regular file in an image directory (the parent link is not sent).</summary>
    public static ulong DirectoryBytes(string dir)
    {
        ulong total = 0;
        foreach (var f in new DirectoryInfo(dir).EnumerateFiles())
            if (f.LinkTarget is null)
                total += (ulong)f.Length;
        return total;
    }

    /// <summary>
    /// Resident memory of the tree from /proc/PID/smaps (Rss lines): what a first pass must send
    /// when nothing has been sent yet.
    /// </summary>
    private static ulong ResidentBytes(Kernel k, int root)
    {
        ulong kb = 0;
        foreach (var t in k.Tree(root))
        {
            if (!t.Alive) continue;
            foreach (var line in k.Proc.Smaps(t.Pid).Split('\n'))
                if (line.StartsWith("Rss:", StringComparison.Ordinal)
                    && ulong.TryParse(line.AsSpan(4).Trim().TrimEnd("kB").Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out ulong v))
                    kb += v;
        }
        return kb * 1024;
    }
}

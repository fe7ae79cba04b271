using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.Migration;
using Spectre.Console;

namespace CriuSharp.Cli;

/// <summary>
/// The options migrate, compare and report share: the workload, the hosts' kernel, the link and
/// cost model, and how long the workload runs before and after. Policy, compression and block
/// size are single values for migrate and lists for compare/report, so each verb adds its own.
/// </summary>
public sealed class MigrationArgs
{
    public Option<string> Workload { get; } = new("--workload", "-w") { Description = "Workload file (JSON; see samples/README.md).", Required = true };
    public Option<string> Bandwidth { get; } = new("--bandwidth") { Description = "Link bandwidth: 128MiB/s (QEMU's default max-bandwidth), 1GB/s, 10Gbit/s.", DefaultValueFactory = _ => "128MiB/s" };
    public Option<string> DowntimeLimit { get; } = new("--downtime-limit") { Description = "Downtime budget of the qemu policy (QEMU's downtime-limit).", DefaultValueFactory = _ => "300ms" };
    public Option<string> Tracker { get; } = new Option<string>("--tracker") { Description = "Dirty-page tracker: auto, soft-dirty, pagemap-scan, uffd-wp, none.", DefaultValueFactory = _ => "auto" }
        .AcceptOnlyFromAmong("auto", "soft-dirty", "pagemap-scan", "uffd-wp", "none");
    public KernelOptions Kernel { get; } = new();
    public Option<string> Warmup { get; } = new("--warmup") { Description = "Virtual time the workload runs on the source before the first pre-dump.", DefaultValueFactory = _ => "200ms" };
    public Option<string> RunAfter { get; } = new("--run-after") { Description = "Virtual time the restored workload runs on the destination before it is checked again.", DefaultValueFactory = _ => "100ms" };
    public Option<string> CompressSpeed { get; } = new("--compress-speed") { Description = "Cost model: LZ4 compression per core (zstd is modelled at a third).", DefaultValueFactory = _ => Rate(MigrationCost.Default.CompressBytesPerSecond) };
    public Option<string> CopySpeed { get; } = new("--copy-speed") { Description = "Cost model: copying pages out of the task (memcpy).", DefaultValueFactory = _ => Rate(MigrationCost.Default.CopyBytesPerSecond) };
    public Option<bool> Preload { get; } = new("--preload") { Description = "Destination pre-loading: apply each pre-dump on the destination as it arrives, so the final restore applies only the final dump's pages." };
    public Option<string> FreezeCost { get; } = new("--freeze-cost") { Description = "Cost model: seizing and freezing one task.", DefaultValueFactory = _ => $"{MigrationCost.Default.FreezeNsPerTask / 1000}us" };
    public Option<string> Rtt { get; } = new("--rtt") { Description = "Cost model: round trip of one lazy-page request in post-copy (assumed, not measured).", DefaultValueFactory = _ => $"{MigrationCost.Default.RoundTripNs / 1000}us" };
    public Option<string> DeltaCache { get; } = new("--delta-cache") { Description = "Source-side cache of last-sent pages that deltas are taken against (LRU; QEMU's default xbzrle-cache-size).", DefaultValueFactory = _ => "64MiB" };

    private static string Rate(double bps) => string.Create(CultureInfo.InvariantCulture, $"{bps / 1e9:0.###}GB/s");

    public void AddTo(Command c)
    {
        c.Options.Add(Workload);
        foreach (var o in new Option[] { Bandwidth, DowntimeLimit, Tracker, Warmup, RunAfter, CompressSpeed, CopySpeed, FreezeCost, Rtt, Preload, DeltaCache })
            c.Options.Add(o);
        Kernel.AddTo(c);
    }

    public string WorkloadPath(ParseResult p)
    {
        var f = new FileInfo(p.GetValue(Workload)!);
        return f.Exists ? f.FullName : throw new UserException(ExitCode.BadInput, $"{f.FullName}: no such file");
    }

    public double BandwidthBytes(ParseResult p) => ParseRate(p.GetValue(Bandwidth)!, "--bandwidth");

    public ulong DowntimeLimitNs(ParseResult p) => CommonOptions.ParseDurationNs(p.GetValue(DowntimeLimit)!);

    public ConvergencePolicy Policy(ParseResult p, string text)
    {
        try
        {
            return ConvergencePolicy.Parse(text, BandwidthBytes(p), DowntimeLimitNs(p));
        }
        catch (ArgumentException e)
        {
            throw new UserException(ExitCode.Usage, e.Message, "Policies: phaul, qemu, xen, fixed:N, none (thresholds as phaul:max-iters=4).");
        }
    }

    public static PageStoreOptions Store(string compress, int kib)
    {
        if (kib < 4 || kib > 256 || kib % 4 != 0)
            throw new UserException(ExitCode.Usage, $"--block-size {kib}: must be a multiple of 4 from 4 to 256 (KiB)");
        return compress.Trim().ToLowerInvariant() switch
        {
            "none" => PageStoreOptions.Raw,
            "zstd" => PageStoreOptions.Zstd(kib / 4),
            "lz4" => PageStoreOptions.Lz4(kib / 4),
            var c => throw new UserException(ExitCode.Usage, $"--compress {c}: expected lz4, zstd or none"),
        };
    }

    public MigrationOptions Options(ParseResult p, ConvergencePolicy policy, PageStoreOptions store, string? keep = null, Action<MigrationProgress>? progress = null,
        bool elide = true, bool delta = false) => new()
        {
            ElideUnchanged = elide,
            DeltaCacheBytes = delta ? DeltaCacheBytes(p) : 0,
            WorkloadPath = WorkloadPath(p),
            Kernel = Kernel.Config(p),
            Policy = policy,
            PageStore = store,
            Tracker = TrackerNames.Parse(p.GetValue(Tracker)!),
            WarmupNs = CommonOptions.ParseDurationNs(p.GetValue(Warmup)!),
            ContinueNs = CommonOptions.ParseDurationNs(p.GetValue(RunAfter)!),
            ImagesRoot = keep,
            Preload = p.GetValue(Preload),
            Progress = progress,
            Cost = MigrationCost.Default with
            {
                LinkBytesPerSecond = BandwidthBytes(p),
                CompressBytesPerSecond = ParseRate(p.GetValue(CompressSpeed)!, "--compress-speed"),
                CopyBytesPerSecond = ParseRate(p.GetValue(CopySpeed)!, "--copy-speed"),
                FreezeNsPerTask = CommonOptions.ParseDurationNs(p.GetValue(FreezeCost)!),
                RoundTripNs = CommonOptions.ParseDurationNs(p.GetValue(Rtt)!),
            },
        };

    /// <summary>--mode as the migration takes it.</summary>
    public static MigrationMode ParseMode(string text) => text switch
    {
        "precopy" => MigrationMode.Precopy,
        "postcopy" => MigrationMode.Postcopy,
        "hybrid" => MigrationMode.Hybrid,
        _ => throw new UserException(ExitCode.Usage, $"--mode {text}: expected precopy, postcopy or hybrid"),
    };

    public static string ModeName(MigrationMode m) => m.ToString().ToLowerInvariant();

    public long DeltaCacheBytes(ParseResult p)
    {
        var text = p.GetValue(DeltaCache)!;
        double b = ParseRate(text, "--delta-cache");
        if (b < PageGeometry.PageSize || b > (1L << 40))
            throw new UserException(ExitCode.Usage, $"--delta-cache '{text}': must be from 4KiB to 1TiB");
        return (long)b;
    }

    /// <summary>Rates as users type them: 128MiB/s, 1.5GB/s, 10Gbit/s, 500Mbit/s, 1000000 (bytes/s).</summary>
    public static double ParseRate(string text, string option)
    {
        var t = text.Trim();
        if (t.EndsWith("/s", StringComparison.OrdinalIgnoreCase)) t = t[..^2];
        (string Suffix, double Scale)[] units =
        [
            ("Gbit", 1e9 / 8), ("Mbit", 1e6 / 8), ("Kbit", 1e3 / 8), ("kbit", 1e3 / 8), ("bit", 1.0 / 8),
            ("GiB", 1L << 30), ("MiB", 1L << 20), ("KiB", 1L << 10),
            ("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("KB", 1e3), ("B", 1),
        ];
        foreach (var (suffix, scale) in units)
            if (t.EndsWith(suffix, StringComparison.Ordinal))
            {
                t = t[..^suffix.Length].Trim();
                return double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v > 0 && double.IsFinite(v)
                    ? v * scale
                    : throw new UserException(ExitCode.Usage, $"{option} '{text}': not a rate (examples: 128MiB/s, 1GB/s, 10Gbit/s)");
            }
        return double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double b) && b > 0 && double.IsFinite(b)
            ? b
            : throw new UserException(ExitCode.Usage, $"{option} '{text}': not a rate (examples: 128MiB/s, 1GB/s, 10Gbit/s)");
    }

    /// <summary>Spectre.Console on a terminal; plain aligned text when redirected or captured (tests).</summary>
    public static bool Fancy(TextWriter o) => ReferenceEquals(o, Console.Out) && !Console.IsOutputRedirected;

    /// <summary>Runs <paramref name="work"/> with a progress bar on stderr when both streams are a terminal.</summary>
    public static T WithProgress<T>(bool json, string title, int maxSteps, Func<Action<MigrationProgress>?, T> work)
    {
        if (json || Console.IsOutputRedirected || Console.IsErrorRedirected)
            return work(null);
        T result = default!;
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        console.Progress().Start(ctx =>
        {
            var task = ctx.AddTask(title, maxValue: Math.Max(1, maxSteps));
            result = work(pr =>
            {
                task.MaxValue = Math.Max(task.MaxValue, pr.MaxSteps);
                task.Value = pr.Done;
                task.Description = $"{title}: {pr.Step}";
            });
            task.Value = task.MaxValue;
        });
        return result;
    }
}

/// <summary>criu-sharp migrate: one live migration, a row per iteration and a summary.</summary>
public static class MigrateCommand
{
    public static Command Create()
    {
        var a = new MigrationArgs();
        var policy = new Option<string>("--policy") { Description = "Convergence policy: phaul (default), qemu, xen, fixed:N, none (stop-and-copy).", DefaultValueFactory = _ => "phaul" };
        var compress = new Option<string>("--compress") { Description = "Page compression: lz4, zstd, none.", DefaultValueFactory = _ => "lz4" }.AcceptOnlyFromAmong("lz4", "zstd", "none");
        var block = new Option<int>("--block-size") { Description = "Compression block size in KiB, 4 (one page) to 256.", DefaultValueFactory = _ => 64 };
        var dir = new Option<string?>("--images-dir", "-D") { Description = "Keep the image directories here (DIR/1, DIR/2, ..., final dump last) for show, x and crit." };
        var elide = new Option<bool>("--elide-unchanged") { Description = "Pre-dumps record pages written with unchanged contents as in-parent (PE_PARENT) instead of sending them (default on; --elide-unchanged false to send them).", DefaultValueFactory = _ => true };
        var delta = new Option<bool>("--delta") { Description = "Pre-dumps send re-dirtied pages as XBZRLE-style deltas when smaller (an image extension: criu-sharp restores such images, CRIU does not)." };
        var mode = new Option<string>("--mode") { Description = "precopy: pre-dumps, then a final dump with every dirty page (default); postcopy: a lazy final dump at once, pages fetched on fault and drained in the background (dump --lazy-pages); hybrid: pre-dumps under the policy, then a lazy final dump.", DefaultValueFactory = _ => "precopy" }
            .AcceptOnlyFromAmong("precopy", "postcopy", "hybrid");
        var transport = new Option<string>("--transport")
        {
            Description = "inproc: source and destination in this process, the link a cost model (deterministic, default); " +
                          "tcp: the destination is a separate criu-sharp process (migrate-service: page server, pre-loading, restore) and every transfer is measured on its sockets.",
            DefaultValueFactory = _ => "inproc",
        }.AcceptOnlyFromAmong("inproc", "tcp");
        var address = new Option<string?>("--address") { Description = "--transport tcp: a running 'criu-sharp migrate-service' to migrate to (default: start one on loopback)." };
        var port = new Option<int>("--port") { Description = "--transport tcp: the migrate-service's port (with --address)." };
        var destDir = new Option<string?>("--dest-dir") { Description = "--transport tcp, destination started here: keep its received images (DIR/images) and its machine (DIR/machine); default: a temporary directory." };
        var timeout = new Option<int>("--ps-timeout") { Description = "--transport tcp: seconds any wait for the other side may take before the migration fails.", DefaultValueFactory = _ => 60 };
        var precompile = new Option<bool>("--precompile")
        {
            Description = "--transport tcp: before the first freeze both sides run a tiny migration of the same mode in process, and a destination started here compiles methods with loops optimised at once (DOTNET_TC_QuickJitForLoops=0), " +
                          "so the downtime does not count .NET's JIT compilation (default on; --precompile false to measure a cold destination).",
            DefaultValueFactory = _ => true,
        };
        var net = new PageServerCliOptions();
        var json = CommonOptions.Json();
        var cmd = new Command("migrate", "Live-migrate a workload between two simulated hosts: pre-dumps under a convergence policy while it runs, final dump, transfer, restore, verification.");
        a.AddTo(cmd);
        cmd.Options.Add(policy);
        cmd.Options.Add(compress);
        cmd.Options.Add(block);
        cmd.Options.Add(dir);
        cmd.Options.Add(elide);
        cmd.Options.Add(delta);
        cmd.Options.Add(mode);
        foreach (var o in new Option[] { transport, address, port, destDir, timeout, precompile })
            cmd.Options.Add(o);
        net.AddTlsTo(cmd);
        cmd.Options.Add(json);
        cmd.SetAction(p =>
        {
            var tcp = Tcp(p.GetValue(transport)!, p.GetValue(address), p.GetValue(port), p.GetResult(port) is { Implicit: false }, p.GetValue(destDir), p.GetValue(timeout), net.ParsedTls(p))
                is { } t ? t with { WarmUp = p.GetValue(precompile) } : null;
            var pol = a.Policy(p, p.GetValue(policy)!);
            var m = MigrationArgs.ParseMode(p.GetValue(mode)!);
            var store = MigrationArgs.Store(p.GetValue(compress)!, p.GetValue(block));
            string? keep = p.GetValue(dir) is string d ? Path.GetFullPath(d) : null;
            bool asJson = p.GetValue(json);
            var o = p.InvocationConfiguration.Output;
            // Plain text (piped, captured) prints each row as its iteration ends; a terminal gets
            // the progress bar, then the table.
            MigrateOutput.RowStream? rows = asJson || MigrationArgs.Fancy(o) ? null
                : new MigrateOutput.RowStream(o, MigrateOutput.Title(a.WorkloadPath(p), pol.Spec, p.GetValue(block), a.Kernel.Config(p), a.BandwidthBytes(p)));
            var result = MigrationArgs.WithProgress(asJson, "migrating", pol.MaxPreDumps + 3,
                progress => LiveMigration.Run(a.Options(p, pol, store, keep, progress, p.GetValue(elide), p.GetValue(delta)) with { IterationDone = rows is null ? null : rows.Add, Mode = m, Tcp = tcp }));
            foreach (var w in result.Warnings)
                p.InvocationConfiguration.Error.WriteLine($"criu-sharp: warning: {w}");
            if (keep is not null)
                ImageFormat.AtomicFile.Write(Path.Combine(keep, LiveMigration.SummaryFile), System.Text.Encoding.UTF8.GetBytes(MigrateOutput.Json(result) + "\n"));
            if (asJson)
                o.WriteLine(MigrateOutput.Json(result));
            else
                MigrateOutput.Text(o, result, tablePrinted: rows is not null);
            return result.Verification.Ok ? 0 : (int)ExitCode.CheckFailed;
        });
        return cmd;
    }

    private static TcpTransport? Tcp(string transport, string? address, int port, bool portGiven, string? destDir, int timeout, Dumper.PageServer.PageServerTls? tls)
    {
        bool given = address is not null || portGiven || destDir is not null || tls is not null;
        if (transport != "tcp")
            return given ? throw new UserException(ExitCode.Usage, "--address, --port, --dest-dir and --tls need --transport tcp") : null;
        if (timeout < 1 || timeout > 86400)
            throw new UserException(ExitCode.Usage, $"--ps-timeout {timeout}: must be 1 to 86400 seconds");
        if (address is not null && (port < 1 || port > 65535))
            throw new UserException(ExitCode.Usage, $"--port {port}: must be 1 to 65535 (the migrate-service's port)");
        if (address is not null && destDir is not null)
            throw new UserException(ExitCode.Usage, "--dest-dir names the directory of a destination started here; a running migrate-service (--address) has its own -D and --machine");
        if (address is null && port != 0)
            throw new UserException(ExitCode.Usage, "--port without --address: a destination started here picks its own port");
        return new TcpTransport
        {
            Address = address,
            Port = port,
            DestinationDir = destDir is null ? null : Path.GetFullPath(destDir),
            DestinationCommand = SelfCommand(),
            IoTimeout = TimeSpan.FromSeconds(timeout),
            Tls = tls,
        };
    }

    /// <summary>How to start this criu-sharp again: the apphost itself, or dotnet with criu-sharp.dll.</summary>
    internal static IReadOnlyList<string> SelfCommand()
    {
        string? exe = Environment.ProcessPath;
        string dll = Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        if (exe is not null && Path.GetFileNameWithoutExtension(exe) == "criu-sharp")
            return [exe];
        return [exe is not null && Path.GetFileNameWithoutExtension(exe) == "dotnet" ? exe : "dotnet", dll];
    }
}

/// <summary>How a migration result is printed: JSON for scripts, a table and a summary for people.</summary>
internal static class MigrateOutput
{
    public static object JsonShape(MigrationResult r) => new
    {
        workload = r.Workload,
        mode = MigrationArgs.ModeName(r.Mode),
        transport = r.Transport,
        destination = r.Destination is not { } d ? null : new
        {
            address = d.Address,
            port = d.Port,
            images_dir = d.ImagesRoot,
            machine = d.Machine,
            pid = d.ProcessId,
            tls = d.Tls,
        },
        policy = r.Policy,
        compression = r.Compression,
        block_kib = r.BlockKiB,
        tracker = r.Tracker,
        arch = r.Arch,
        kernel = r.Kernel,
        bandwidth_bytes_per_second = r.BandwidthBytesPerSecond,
        images_root = r.ImagesRoot,
        iterations = r.Iterations.Select(i => new
        {
            index = i.Index,
            kind = i.Kind,
            images_dir = i.ImagesDir,
            pages_scanned = i.PagesScanned,
            pages_written = i.PagesWritten,
            pages_skipped_parent = i.PagesSkippedParent,
            bytes_raw = i.BytesRaw,
            bytes_compressed = i.BytesCompressed,
            bytes_sent = i.BytesSent,
            frozen_ns = i.FrozenNs,
            transfer_ns = i.TransferNs,
            page_bytes_on_wire = i.PageBytesOnWire,
            duration_ns = i.DurationNs,
            dirty_rate_pages_per_second = i.DirtyRatePagesPerSecond is double d ? Math.Round(d, 1) : (double?)null,
            decision = i.Decision,
            stats = JsonOut.Stats(i.Stats),
        }),
        summary = new MigrateSummary(r),
        verification = new
        {
            ok = r.Verification.Ok,
            checksums_ok = r.Verification.ChecksumsOk,
            vmas_verified = r.Verification.VmasVerified,
            error = r.Verification.Error,
            after_restore = r.Verification.AfterRestore,
            after_run = r.Verification.AfterContinue,
        },
        restore_stats = JsonOut.Stats(r.Restore with { WallClock = null }),
        post_copy = r.PostCopy is not { } pc ? null : new
        {
            lazy_pages = pc.LazyPages,
            faults = pc.Stats.Faults,
            pages_by_fault = pc.Stats.PagesByFault,
            pages_by_drain = pc.Stats.PagesByDrain,
            zero_pages = pc.Stats.ZeroPages,
            fault_latency_mean_ns = pc.Stats.FaultLatencyMeanNs,
            fault_latency_p50_ns = pc.Stats.FaultLatencyP50Ns,
            fault_latency_p99_ns = pc.Stats.FaultLatencyP99Ns,
            fault_latency_max_ns = pc.Stats.FaultLatencyMaxNs,
            stall_ns = pc.Stats.StallNs,
            last_page_ns = pc.LastPageNs,
            pages_lost = pc.Stats.PagesLost,
            measured = pc.Measured,
            error = pc.Error,
        },
        warnings = r.Warnings,
    };

    public static string Json(MigrationResult r) => JsonSerializer.Serialize(JsonShape(r), JsonOut.Options);

    public static string Bytes(ulong b) => b switch
    {
        < 10_000 => $"{b} B",
        < 10UL << 20 => string.Create(CultureInfo.InvariantCulture, $"{b / 1024.0:0.0} KiB"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{b / 1048576.0:0.0} MiB"),
    };

    public static string Ms(ulong ns) => string.Create(CultureInfo.InvariantCulture, $"{ns / 1e6:0.00} ms");

    public static readonly string[] Columns = ["#", "kind", "scanned", "written", "in parent", "raw", "stored", "sent", "duration", "dirty rate/s", "decision"];

    public static string[] Row(IterationRecord i) =>
    [
        i.Index.ToString(CultureInfo.InvariantCulture), i.Kind,
        i.PagesScanned.ToString(CultureInfo.InvariantCulture), i.PagesWritten.ToString(CultureInfo.InvariantCulture), i.PagesSkippedParent.ToString(CultureInfo.InvariantCulture),
        Bytes(i.BytesRaw), Bytes(i.BytesCompressed), Bytes(i.BytesSent), Ms(i.DurationNs),
        i.DirtyRatePagesPerSecond is double d ? d.ToString("0", CultureInfo.InvariantCulture) : "-",
        i.Decision ?? "final (frozen)",
    ];

    /// <summary>The first line: what was migrated and how (the tracker follows once the first dump resolved it).</summary>
    public static Func<IterationRecord, string> Title(string workload, string policy, int blockKiB, SimKernel.KernelConfig k, double bandwidth) =>
        i => $"migrate {workload}: policy {policy}, {i.Stats.Compression}{(i.Stats.Compression == "none" ? "" : $" {blockKiB} KiB blocks")}, tracker {i.Stats.Tracker}, {k.Arch.Name}/{k.Version.Name}, link {bandwidth / 1048576.0:0.#} MiB/s";

    private static readonly int[] RightAligned = [0, 2, 3, 4, 5, 6, 7, 8, 9];

    /// <summary>
    /// Rows printed as iterations end, for output read by another program while the migration runs
    /// (a pipe, a log). Columns have fixed minimum widths since later rows are not known yet.
    /// </summary>
    public sealed class RowStream(TextWriter o, Func<IterationRecord, string> title)
    {
        private static readonly int[] MinWidths = [3, 8, 9, 9, 9, 10, 10, 10, 10, 12, 0];
        private bool _started;

        public void Add(IterationRecord i)
        {
            if (!_started)
            {
                _started = true;
                o.WriteLine(title(i));
                o.WriteLine(Line(Columns));
            }
            o.WriteLine(Line(Row(i)));
            o.Flush();
        }

        private static string Line(string[] cells) => string.Join("  ", cells.Select((x, c) =>
            c == cells.Length - 1 ? x : RightAligned.Contains(c) ? x.PadLeft(MinWidths[c]) : x.PadRight(MinWidths[c]))).TrimEnd();
    }

    public static void Text(TextWriter o, MigrationResult r, bool tablePrinted = false)
    {
        if (!tablePrinted)
        {
            o.WriteLine($"migrate {r.Workload}: policy {r.Policy}, {r.Compression}{(r.Compression == "none" ? "" : $" {r.BlockKiB} KiB blocks")}, tracker {r.Tracker}, {r.Arch}/{r.Kernel}, link {r.BandwidthBytesPerSecond / 1048576.0:0.#} MiB/s");
            // On a terminal the table must fit the window: the decision shrinks to its verdict (the
            // stop reason is in the summary below); redirected output keeps the whole sentence.
            bool fancy = MigrationArgs.Fancy(o);
            Table(o, Columns, r.Iterations.Select(Row).Select(c => fancy ? [.. c[..^1], c[^1].Split(':')[0]] : c).ToList(), rightAligned: RightAligned);
        }
        var d = r.Downtime;
        var v = r.Verification;
        var lines = new List<(string, string)>
        {
            ("pre-dumps", $"{r.PreDumps} (stop: {r.StopReason})"),
            ("total bytes sent", $"{Bytes(r.TotalBytesSent)} ({r.TotalBytesSent} B; final dump {Bytes(r.FinalBytesSent)})"),
            ("downtime", $"{Ms(d.TotalNs)} = frozen {Ms(d.FrozenNs)} + transfer {Ms(d.TransferNs)} + restore {Ms(d.RestoreNs)}{(d.JitNs is ulong jit ? $" (of which .NET JIT compilation {Ms(jit)})" : "")}"),
            ("expected downtime", $"{Ms(r.ExpectedDowntimeNs)} (QEMU's estimate: {Bytes(r.RemainingBytesAtDecision)} remaining at the last decision / bandwidth; actual transfer {Ms(d.TransferNs)})"),
            ("total time", $"{Ms(r.TotalTimeNs)} from the first freeze to the restored tree running"),
            ("verification", v.Ok
                ? $"ok: {v.VmasVerified} VMA checksums, workload self-check ok after restore and after running on ({string.Join(", ", v.AfterContinue.Select(x => $"pid {x.Pid}: {x.PagesChecked} pages"))})"
                : $"FAILED: {v.Error ?? string.Join("; ", v.AfterRestore.Concat(v.AfterContinue).Where(x => !x.Ok).Select(x => $"pid {x.Pid}: {x.Detail}"))}"),
        };
        if (r.PostCopy is { } pc)
        {
            var st = pc.Stats;
            lines.Insert(0, ("mode", $"{MigrationArgs.ModeName(r.Mode)}: the final dump left private pages on the source (dump --lazy-pages)"));
            lines.Insert(4, ("post-copy", $"{pc.LazyPages} lazy pages: {st.PagesByFault} by {st.Faults} faults, {st.PagesByDrain} by the drain, {st.ZeroPages} zero-filled; last page {Ms(pc.LastPageNs)} after resume"));
            lines.Insert(5, ("fault latency", $"mean {Ms(st.FaultLatencyMeanNs)}, p50 {Ms(st.FaultLatencyP50Ns)}, p99 {Ms(st.FaultLatencyP99Ns)}, max {Ms(st.FaultLatencyMaxNs)}; threads stalled {Ms(st.StallNs)} in all"));
            if (pc.Error is not null)
                lines.Insert(6, ("post-copy error", pc.Error));
        }
        if (r.Transport == "tcp")
            lines.Insert(0, ("transport", $"tcp: destination {(r.Destination?.ProcessId is int dp ? $"process {dp} " : "")}at {r.Destination?.Address}:{r.Destination?.Port}{(r.Destination?.Tls == true ? " over TLS" : "")}; "
                + "transfer, downtime and post-copy times measured on the wall clock (pages over the page server, other images over the control connection)"));
        if (r.ElideUnchanged || r.DeltaCacheBytes > 0)
        {
            var t = r.DeltaTotals;
            lines.Add(("elision / delta", $"{t.PagesElided} pages elided; {t.PagesDelta} pages as deltas ({Bytes(t.DeltaBytes)}); cache {Bytes((ulong)r.DeltaCacheBytes)}: {t.CacheHits} hits, {t.CacheMisses} misses, {t.Overflows} overflows; {Bytes(t.BytesSaved)} saved"));
        }
        if (r.ImagesRoot is not null)
            lines.Add(("images", $"{r.ImagesRoot} (final dump in {r.Iterations[^1].ImagesDir})"));
        if (r.Destination is { ImagesRoot: { } di, Machine: { } dm })
            lines.Add(("destination", $"images {di}, machine {dm} (criu-sharp verify --machine {dm})"));
        int w = lines.Max(l => l.Item1.Length);
        foreach (var (k, val) in lines)
            o.WriteLine($"{k.PadRight(w)}  {val}");
    }

    /// <summary>A Spectre.Console table on a terminal, plain columns padded to width otherwise.</summary>
    public static void Table(TextWriter o, string[] header, IReadOnlyList<string[]> rows, int[] rightAligned)
    {
        if (MigrationArgs.Fancy(o))
        {
            var t = new Table().Border(TableBorder.Simple);
            for (int c = 0; c < header.Length; c++)
            {
                var col = new TableColumn(Markup.Escape(header[c])).NoWrap();
                if (rightAligned.Contains(c)) col.RightAligned();
                t.AddColumn(col);
            }
            foreach (var r in rows)
                t.AddRow(r.Select(x => new Markup(Markup.Escape(x))).ToArray());
            AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Out) }).Write(t);
            return;
        }
        var widths = header.Select((h, c) => Math.Max(h.Length, rows.Count == 0 ? 0 : rows.Max(r => r[c].Length))).ToArray();
        string Line(string[] cells) => string.Join("  ", cells.Select((x, c) =>
            c == cells.Length - 1 ? x : rightAligned.Contains(c) ? x.PadLeft(widths[c]) : x.PadRight(widths[c])));
        o.WriteLine(Line(header).TrimEnd());
        foreach (var r in rows)
            o.WriteLine(Line(r).TrimEnd());
    }
}

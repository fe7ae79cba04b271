using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using CriuSharp.Migration;

namespace CriuSharp.Cli;

/// <summary>The policy × compression × block-size matrix that compare and report run.</summary>
internal sealed class MatrixArgs
{
    public readonly MigrationArgs Common = new();
    public readonly Option<string> Policies;
    public readonly Option<string> Compress;
    public readonly Option<string> BlockSizes = new("--block-size") { Description = "Comma-separated compression block sizes in KiB.", DefaultValueFactory = _ => "64" };
    public readonly Option<string> Elide = new("--elide") { Description = "Unchanged-page elision in pre-dumps: on (default), off, or off,on to compare.", DefaultValueFactory = _ => "on" };
    public readonly Option<string> Delta = new("--delta") { Description = "Delta encoding of re-dirtied pages in pre-dumps: off, on, or off,on to compare.", DefaultValueFactory = _ => "off" };
    public readonly Option<string> Transport = new Option<string>("--transport")
    {
        Description = "inproc: each run in this process, the link a cost model (deterministic, default); tcp: each run as migrate --transport tcp, " +
                      "with its own migrate-service process on loopback and every transfer measured.",
        DefaultValueFactory = _ => "inproc",
    }.AcceptOnlyFromAmong("inproc", "tcp");
    public readonly Option<string> Modes = new("--modes") { Description = "Comma-separated migration modes (precopy, postcopy, hybrid); postcopy runs once, with the first policy (it takes no pre-dumps).", DefaultValueFactory = _ => "precopy" };

    public MatrixArgs(string defaultPolicies, string defaultCompress)
    {
        Policies = new("--policies") { Description = "Comma-separated policies (phaul, qemu, xen, fixed:N, none).", DefaultValueFactory = _ => defaultPolicies };
        Compress = new("--compress") { Description = "Comma-separated compressions (lz4, zstd, none).", DefaultValueFactory = _ => defaultCompress };
    }

    public void AddTo(Command c)
    {
        Common.AddTo(c);
        c.Options.Add(Policies);
        c.Options.Add(Compress);
        c.Options.Add(BlockSizes);
        c.Options.Add(Elide);
        c.Options.Add(Delta);
        c.Options.Add(Modes);
        c.Options.Add(Transport);
    }

    private static List<bool> OnOff(string text, string option)
    {
        var values = SplitList(text).Select(v => v.ToLowerInvariant() switch
        {
            "off" or "no" or "false" => false,
            "on" or "yes" or "true" => true,
            _ => throw new UserException(ExitCode.Usage, $"{option} '{v}': expected off, on or off,on"),
        }).Distinct().ToList();
        return values.Count > 0 ? values : throw new UserException(ExitCode.Usage, $"{option} needs at least one value");
    }

    /// <summary>
    /// Splits a list on commas, except the commas inside a policy's parameters
    /// ("phaul:max-iters=3,min-pages=10,none" is two policies).
    /// </summary>
    public static List<string> SplitList(string text)
    {
        var items = new List<string>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (part.Contains('=') && !part.Contains(':') && items.Count > 0)
                items[^1] += "," + part;
            else
                items.Add(part);
        }
        return items;
    }

    public List<MigrationResult> Run(ParseResult p, bool json)
    {
        var policies = SplitList(p.GetValue(Policies)!).Select(x => Common.Policy(p, x)).ToList();
        var compress = SplitList(p.GetValue(Compress)!);
        var blocks = SplitList(p.GetValue(BlockSizes)!).Select(b => int.TryParse(b, NumberStyles.None, CultureInfo.InvariantCulture, out int k)
            ? k : throw new UserException(ExitCode.Usage, $"--block-size '{b}': not a number of KiB")).ToList();
        if (policies.Count == 0 || compress.Count == 0 || blocks.Count == 0)
            throw new UserException(ExitCode.Usage, "--policies, --compress and --block-size need at least one value each");
        var elides = OnOff(p.GetValue(Elide)!, "--elide");
        var deltas = OnOff(p.GetValue(Delta)!, "--delta");
        var modes = SplitList(p.GetValue(Modes)!).Select(MigrationArgs.ParseMode).Distinct().ToList();
        if (modes.Count == 0)
            throw new UserException(ExitCode.Usage, "--modes needs at least one value");
        var cells = (from mode in modes
                     from pol in mode == MigrationMode.Postcopy ? policies.Take(1) : policies
                     from c in compress
                     from k in c.Equals("none", StringComparison.OrdinalIgnoreCase) ? blocks.Take(1) : blocks
                     from el in elides
                     from de in deltas
                     select (pol, store: MigrationArgs.Store(c, k), el, de, mode)).ToList();
        // Each tcp run starts its own destination, as migrate --transport tcp does.
        TcpTransport? tcp = p.GetValue(Transport) == "tcp" ? new TcpTransport { DestinationCommand = MigrateCommand.SelfCommand() } : null;
        int maxSteps = cells.Sum(x => x.pol.MaxPreDumps + 3);
        return MigrationArgs.WithProgress(json, "comparing", maxSteps, progress =>
        {
            var results = new List<MigrationResult>();
            int before = 0;
            foreach (var (pol, store, el, de, mode) in cells)
            {
                int offset = before;
                var r = LiveMigration.Run(Common.Options(p, pol, store, progress: progress is null ? null
                    : pr => progress(pr with { Step = $"{pol.Spec}: {pr.Step}", Done = offset + pr.Done, MaxSteps = maxSteps }), elide: el, delta: de) with
                { Mode = mode, Tcp = tcp });
                results.Add(r);
                before += pol.MaxPreDumps + 3;
                progress?.Invoke(new MigrationProgress($"{pol.Spec} done", before, maxSteps));
            }
            return results;
        });
    }
}

/// <summary>criu-sharp compare: the same workload migrated under several settings, side by side.</summary>
public static class CompareCommand
{
    public static Command Create()
    {
        var m = new MatrixArgs("phaul,qemu,xen,fixed:3,none", "lz4");
        var json = CommonOptions.Json();
        var cmd = new Command("compare", "Migrate one workload under each policy × compression × block size and compare bytes sent, downtime and verification.");
        m.AddTo(cmd);
        cmd.Options.Add(json);
        cmd.SetAction(p =>
        {
            bool asJson = p.GetValue(json);
            var results = m.Run(p, asJson);
            var o = p.InvocationConfiguration.Output;
            if (asJson)
                o.WriteLine(JsonSerializer.Serialize(new { workload = results[0].Workload, transport = results[0].Transport, runs = results.Select(Summary) }, JsonOut.Options));
            else
            {
                o.WriteLine($"compare {results[0].Workload}: tracker {results[0].Tracker}, {results[0].Arch}/{results[0].Kernel}, {(results[0].Transport == "tcp" ? "transport tcp (measured)" : $"link {results[0].BandwidthBytesPerSecond / 1048576.0:0.#} MiB/s")}{(results.All(r => r.ElideUnchanged) ? ", unchanged pages elided" : "")}");
                var (header, rows) = Table(results);
                MigrateOutput.Table(o, header, rows, rightAligned: CompareCommand.NumericColumns(header));
            }
            return results.All(r => r.Verification.Ok) ? 0 : (int)ExitCode.CheckFailed;
        });
        return cmd;
    }

    /// <summary>The summary table; the elide and delta columns appear only when the runs differ in elision or one sends deltas.</summary>
    internal static (string[] Header, List<string[]> Rows) Table(IReadOnlyList<MigrationResult> results)
    {
        var (header, rows) = ElisionTable(results);
        if (results.All(r => r.Mode == MigrationMode.Precopy))
            return (header, rows);
        // A mode column first, and the post-copy phase's end (time until the last lazy page arrived) last.
        return (["mode", .. header, "last page"],
            rows.Select((c, i) => (string[])[MigrationArgs.ModeName(results[i].Mode), .. c,
                results[i].PostCopy is { } pc ? MigrateOutput.Ms(pc.LastPageNs) : "-"]).ToList());
    }

    private static (string[] Header, List<string[]> Rows) ElisionTable(IReadOnlyList<MigrationResult> results)
    {
        bool axes = results.Select(r => r.ElideUnchanged).Distinct().Count() > 1 || results.Any(r => r.DeltaCacheBytes > 0);
        if (!axes)
            return (Header, results.Select(Row).ToList());
        return ([.. Header[..3], "elide", "delta", .. Header[3..]],
            results.Select(r => { var c = Row(r); return (string[])[.. c[..3], r.ElideUnchanged ? "on" : "off", r.DeltaCacheBytes > 0 ? "on" : "off", .. c[3..]]; }).ToList());
    }

    /// <summary>The columns holding figures (right-aligned), wherever the optional columns put them.</summary>
    internal static int[] NumericColumns(string[] header) =>
        header.Select((h, i) => (h, i)).Where(x => x.h is "block KiB" or "pre-dumps" or "total sent" or "final dump" or "downtime" or "expected" or "total time" or "last page").Select(x => x.i).ToArray();

    internal static readonly string[] Header = ["policy", "compress", "block KiB", "pre-dumps", "total sent", "final dump", "downtime", "expected", "total time", "verified"];

    internal static string[] Row(MigrationResult r) =>
    [
        r.Policy, r.Compression, r.Compression == "none" ? "-" : r.BlockKiB.ToString(CultureInfo.InvariantCulture),
        r.PreDumps.ToString(CultureInfo.InvariantCulture), MigrateOutput.Bytes(r.TotalBytesSent), MigrateOutput.Bytes(r.FinalBytesSent),
        MigrateOutput.Ms(r.Downtime.TotalNs), MigrateOutput.Ms(r.ExpectedDowntimeNs), MigrateOutput.Ms(r.TotalTimeNs),
        r.Verification.Ok ? "yes" : "NO",
    ];

    internal static object Summary(MigrationResult r) => new CompareRun(r);
}

/// <summary>
/// The figures of one migration run that migrate's <c>summary</c> and each of compare's
/// <c>runs</c> print, defined once (JsonOut's snake_case names the keys).
/// </summary>
internal class MigrationSummaryJson(MigrationResult r)
{
    public int PreDumps { get; } = r.PreDumps;
    public string StopReason { get; } = r.StopReason;
    public ulong TotalBytesSent { get; } = r.TotalBytesSent;
    public ulong FinalDumpBytesSent { get; } = r.FinalBytesSent;
    public ulong DowntimeNs { get; } = r.Downtime.TotalNs;
    public object Downtime { get; } = new { frozen_ns = r.Downtime.FrozenNs, transfer_ns = r.Downtime.TransferNs, restore_ns = r.Downtime.RestoreNs, jit_ns = r.Downtime.JitNs };
    public ulong ExpectedDowntimeNs { get; } = r.ExpectedDowntimeNs;
    public ulong TotalTimeNs { get; } = r.TotalTimeNs;
    public bool Verified { get; } = r.Verification.Ok;
    public bool ElideUnchanged { get; } = r.ElideUnchanged;
    public long DeltaCacheBytes { get; } = r.DeltaCacheBytes;
    public object Delta { get; } = r.DeltaTotals;
    public string Mode { get; } = MigrationArgs.ModeName(r.Mode);
    /// <summary>Post-copy and hybrid: time from resume to the last lazy page, the faults and their latency; null for pre-copy.</summary>
    public object? PostCopy { get; } = r.PostCopy is not { } pc ? null : new
    {
        last_page_ns = pc.LastPageNs,
        lazy_pages = pc.LazyPages,
        faults = pc.Stats.Faults,
        pages_by_fault = pc.Stats.PagesByFault,
        pages_by_drain = pc.Stats.PagesByDrain,
        fault_latency_mean_ns = pc.Stats.FaultLatencyMeanNs,
        fault_latency_p50_ns = pc.Stats.FaultLatencyP50Ns,
        fault_latency_p99_ns = pc.Stats.FaultLatencyP99Ns,
        fault_latency_max_ns = pc.Stats.FaultLatencyMaxNs,
    };
}

/// <summary>One row of compare's matrix: which cell it is, its summary, and its per-iteration series.</summary>
internal sealed class CompareRun(MigrationResult r) : MigrationSummaryJson(r)
{
    public string Policy { get; } = r.Policy;
    public string Compression { get; } = r.Compression;
    public int BlockKib { get; } = r.BlockKiB;
    public string Transport { get; } = r.Transport;
    public IEnumerable<ulong> PagesWritten { get; } = r.Iterations.Select(i => i.PagesWritten);
    public IEnumerable<ulong> BytesSent { get; } = r.Iterations.Select(i => i.BytesSent);
}

/// <summary>migrate's summary: the common figures and the remaining dirty bytes at the last decision.</summary>
internal sealed class MigrateSummary(MigrationResult r) : MigrationSummaryJson(r)
{
    public ulong RemainingBytesAtDecision { get; } = r.RemainingBytesAtDecision;
}

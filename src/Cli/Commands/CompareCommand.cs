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
        var cells = (from pol in policies
                     from c in compress
                     from k in c.Equals("none", StringComparison.OrdinalIgnoreCase) ? blocks.Take(1) : blocks
                     select (pol, store: MigrationArgs.Store(c, k))).ToList();
        int maxSteps = cells.Sum(x => x.pol.MaxPreDumps + 3);
        return MigrationArgs.WithProgress(json, "comparing", maxSteps, progress =>
        {
            var results = new List<MigrationResult>();
            int before = 0;
            foreach (var (pol, store) in cells)
            {
                int offset = before;
                var r = LiveMigration.Run(Common.Options(p, pol, store, progress: progress is null ? null
                    : pr => progress(pr with { Step = $"{pol.Spec}: {pr.Step}", Done = offset + pr.Done, MaxSteps = maxSteps })));
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
                o.WriteLine(JsonSerializer.Serialize(new { workload = results[0].Workload, runs = results.Select(Summary) }, JsonOut.Options));
            else
            {
                o.WriteLine($"compare {results[0].Workload}: tracker {results[0].Tracker}, {results[0].Arch}/{results[0].Kernel}, link {results[0].BandwidthBytesPerSecond / 1048576.0:0.#} MiB/s");
                MigrateOutput.Table(o, Header, results.Select(Row).ToList(), rightAligned: [2, 3, 4, 5, 6, 7, 8]);
            }
            return results.All(r => r.Verification.Ok) ? 0 : (int)ExitCode.CheckFailed;
        });
        return cmd;
    }

    internal static readonly string[] Header = ["policy", "compress", "block KiB", "pre-dumps", "total sent", "final dump", "downtime", "expected", "total time", "verified"];

    internal static string[] Row(MigrationResult r) =>
    [
        r.Policy, r.Compression, r.Compression == "none" ? "-" : r.BlockKiB.ToString(CultureInfo.InvariantCulture),
        r.PreDumps.ToString(CultureInfo.InvariantCulture), MigrateOutput.Bytes(r.TotalBytesSent), MigrateOutput.Bytes(r.FinalBytesSent),
        MigrateOutput.Ms(r.Downtime.TotalNs), MigrateOutput.Ms(r.ExpectedDowntimeNs), MigrateOutput.Ms(r.TotalTimeNs),
        r.Verification.Ok ? "yes" : "NO",
    ];

    internal static object Summary(MigrationResult r) => new
    {
        policy = r.Policy,
        compression = r.Compression,
        block_kib = r.BlockKiB,
        pre_dumps = r.PreDumps,
        stop_reason = r.StopReason,
        total_bytes_sent = r.TotalBytesSent,
        final_dump_bytes_sent = r.FinalBytesSent,
        downtime_ns = r.Downtime.TotalNs,
        downtime = new { frozen_ns = r.Downtime.FrozenNs, transfer_ns = r.Downtime.TransferNs, restore_ns = r.Downtime.RestoreNs },
        expected_downtime_ns = r.ExpectedDowntimeNs,
        total_time_ns = r.TotalTimeNs,
        verified = r.Verification.Ok,
        pages_written = r.Iterations.Select(i => i.PagesWritten),
        bytes_sent = r.Iterations.Select(i => i.BytesSent),
    };
}

using System.Diagnostics;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.Migration;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Cli;

/// <summary>
/// Invariants under load: rounds of running workloads, chains of pre-dumps with random trackers,
/// compressions, block sizes and auto-dedup, a final dump (leaving the tree running or killing it),
/// a restore compared byte for byte with the tree as frozen, and the workloads' self-checks — which
/// fail on any lost write. A killed tree goes on running from its restored copy, so writes made
/// after a restore are checked by later rounds too. Now and then a whole live migration with a
/// random convergence policy runs as well. Everything follows from the seed.
/// </summary>
public static class FuzzRun
{
    public sealed record Options
    {
        public ulong Seed { get; init; } = 1;
        /// <summary>Stop after this long (null: run until <see cref="Rounds"/> or cancellation).</summary>
        public TimeSpan? Duration { get; init; }
        public int Rounds { get; init; } = int.MaxValue;
        public string? WorkDir { get; init; }
        public Action<string>? Log { get; init; }
        public CancellationToken Cancel { get; init; }
    }

    public sealed class Report
    {
        public int Rounds { get; set; }
        public int PreDumps { get; set; }
        public int Dumps { get; set; }
        public int Restores { get; set; }
        public int Migrations { get; set; }
        public int SelfChecks { get; set; }
        public TimeSpan Elapsed { get; set; }
        public string? Failure { get; set; }
        public override string ToString() =>
            $"{Rounds} rounds: {PreDumps} pre-dumps, {Dumps} dumps, {Restores} restores identical, {Migrations} migrations, " +
            $"{SelfChecks} self-checks passed; {(Failure is null ? "no failure" : "FAILED: " + Failure)}; {Elapsed.TotalSeconds:0.0} s";
    }

    private static readonly string[] Behaviours =
    [
        """{ "type": "hotcold", "mapping": "heap", "distribution": "zipf", "exponent": 1.1, "pages_per_second": 40000 }""",
        """{ "type": "uniform", "mapping": "heap", "pages_per_second": 30000 }""",
        """{ "type": "sequential", "mapping": "heap", "stride_pages": 1, "pages_per_second": 20000 }""",
        """{ "type": "idle", "mapping": "heap", "prefill": true }""",
    ];

    public static Report Run(Options o)
    {
        var report = new Report();
        var wall = Stopwatch.StartNew();
        var rng = new Random(unchecked((int)o.Seed ^ (int)(o.Seed >> 32)));
        string root = o.WorkDir ?? Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), $"criu-sharp-fuzzrun-{Guid.NewGuid():N}");
        Directory.CreateDirectory(root);
        try
        {
            string arch = rng.Next(2) == 0 ? "x86_64" : "arm64";
            var kernel = FuzzSupport.NewKernel(arch);
            var pids = new List<int>();
            for (int i = 0; i < 2; i++)
                pids.Add(FuzzSupport.Spawn(kernel, Workload(rng)));
            bool Done() => report.Failure is not null || report.Rounds >= o.Rounds || o.Cancel.IsCancellationRequested
                || (o.Duration is { } d && wall.Elapsed >= d);
            while (!Done())
            {
                string roundDir = Path.Combine(root, $"r{report.Rounds % 4}");
                if (Directory.Exists(roundDir)) Directory.Delete(roundDir, true);
                var host = new LiveHost(kernel);
                host.Advance((ulong)rng.Next(1, 6) * 1_000_000);
                int pid = pids[rng.Next(pids.Count)];
                int pre = rng.Next(4);
                string? prev = null;
                var store = RandomStore(rng);
                var tracker = (TrackerKind)rng.Next(Enum.GetValues<TrackerKind>().Length);
                bool dedup = rng.Next(3) == 0;
                for (int i = 0; i < pre; i++)
                {
                    Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = pid, ImagesDir = Path.Combine(roundDir, $"pre{i}"), PrevImagesDir = prev, PageStore = store, Tracker = tracker, AutoDedup = dedup });
                    report.PreDumps++;
                    prev = $"../pre{i}";
                    host.Advance((ulong)rng.Next(0, 4) * 1_000_000);
                    store = RandomStore(rng);
                }
                var expected = FuzzSupport.Snapshot(kernel, pid);
                bool leaveRunning = rng.Next(2) == 0;
                string final = Path.Combine(roundDir, "dump");
                Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = pid, ImagesDir = final, PrevImagesDir = prev, PageStore = store, Tracker = tracker, TrackMem = true, AutoDedup = dedup, LeaveRunning = leaveRunning });
                report.Dumps++;
                if (leaveRunning)
                {
                    // The source keeps its tree: the copy goes to a fresh host and is checked there.
                    var dest = FuzzSupport.NewKernel(arch);
                    Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = final });
                    report.Failure = FuzzSupport.Compare(expected, dest) ?? FuzzSupport.SelfCheck(dest, pid);
                }
                else
                {
                    // The tree is gone from the source: bring it back on the same host and keep using it.
                    if (kernel.FindTask(pid) is not null)
                        foreach (var t in kernel.Tree(pid).ToList())
                            if (!t.Alive) kernel.Reap(t);
                    Criu.Restore(new ClockOnlyHost(kernel).AsKernelApi(), new RestoreOptions { ImagesDir = final });
                    report.Failure = FuzzSupport.Compare(expected, kernel);
                }
                report.Restores++;
                foreach (int p in pids)
                {
                    report.Failure ??= FuzzSupport.SelfCheck(kernel, p);
                    report.SelfChecks++;
                }
                if (report.Failure is null && rng.Next(25) == 0)
                {
                    string wl = Path.Combine(root, "migrate.json");
                    File.WriteAllText(wl, Workload(rng));
                    string policy = new[] { "phaul", "qemu", "xen", "fixed:2", "none" }[rng.Next(5)];
                    var m = LiveMigration.Run(new MigrationOptions
                    {
                        WorkloadPath = wl,
                        Kernel = kernel.Config,
                        Policy = ConvergencePolicy.Parse(policy),
                        PageStore = RandomStore(rng),
                        WarmupNs = 5_000_000,
                        ContinueNs = 5_000_000,
                    });
                    report.Migrations++;
                    if (!m.Verification.Ok)
                        report.Failure = $"migration with policy {policy}: {m.Verification.Error ?? "verification failed"}";
                }
                if (report.Failure is not null)
                    report.Failure = $"round {report.Rounds} (seed {o.Seed}, pid {pid}, {pre} pre-dumps, {tracker}, leave-running {leaveRunning}): {report.Failure}";
                report.Rounds++;
                report.Elapsed = wall.Elapsed;
                if (report.Rounds % 50 == 0)
                    o.Log?.Invoke(report.ToString());
            }
        }
        finally
        {
            if (o.WorkDir is null)
                try { Directory.Delete(root, true); } catch (IOException) { }
        }
        report.Elapsed = wall.Elapsed;
        return report;
    }

    private static string Workload(Random rng) => $$"""
        { "seed": {{rng.Next(1, 1_000_000)}}, "processes": [ { "mappings": [ { "name": "heap", "size": "{{rng.Next(8, 97)}}KiB" } ],
          "behaviour": {{Behaviours[rng.Next(Behaviours.Length)]}} } ] }
        """;

    private static PageStoreOptions RandomStore(Random rng) => rng.Next(3) switch
    {
        0 => PageStoreOptions.Raw,
        1 => PageStoreOptions.Lz4(1 << rng.Next(0, 7)),
        _ => PageStoreOptions.Zstd(1 << rng.Next(0, 7)),
    };
}

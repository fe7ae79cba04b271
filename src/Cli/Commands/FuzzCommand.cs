using System.CommandLine;

namespace CriuSharp.Cli;

/// <summary>fuzz images / fuzz run: the hardening tests' engines, for runs longer than the suite's.</summary>
public static class FuzzCommand
{
    public static Command Create()
    {
        var cmd = new Command("fuzz", "Hardening runs: damaged images (fuzz images) and randomized dump/restore under load (fuzz run); exit 1 on any failure.");
        cmd.Subcommands.Add(Images());
        cmd.Subcommands.Add(Run());
        return cmd;
    }

    private static Option<ulong> Seed() => new("--seed") { Description = "Seed; the same seed gives the same variants.", DefaultValueFactory = _ => 1 };

    private static Command Images()
    {
        var seed = Seed();
        var count = new Option<int>("--count") { Description = "Number of damaged variants to restore.", DefaultValueFactory = _ => 10_000 };
        var timeout = new Option<double>("--timeout") { Description = "Seconds one variant may take before it counts as a hang.", DefaultValueFactory = _ => 10 };
        var cmd = new Command("images",
            "Restore COUNT damaged copies of a real pre-dump chain (bit flips, truncations, inflated sizes, swapped, missing or foreign files, " +
            "broken parent links); each must restore identically or fail with one typed line.");
        cmd.Options.Add(seed);
        cmd.Options.Add(count);
        cmd.Options.Add(timeout);
        cmd.SetAction(p =>
        {
            int n = p.GetValue(count);
            if (n < 1)
                throw new UserException(ExitCode.Usage, "--count must be at least 1");
            double t = p.GetValue(timeout);
            if (!(t > 0))
                throw new UserException(ExitCode.Usage, "--timeout must be positive");
            var o = p.InvocationConfiguration.Output;
            var r = FuzzImages.Run(new FuzzImages.Options
            {
                Seed = p.GetValue(seed), Count = n, PerVariantTimeout = TimeSpan.FromSeconds(t),
                Log = line => p.InvocationConfiguration.Error.WriteLine($"criu-sharp: fuzz: {line}"),
            });
            foreach (var (kind, c) in r.ByMutation)
                o.WriteLine($"  {kind,-24} {c.Restored,6} restored {c.Errors,6} refused");
            foreach (var (kind, c) in r.ErrorKinds.OrderByDescending(x => x.Value).Take(15))
                o.WriteLine($"  {c,6} x {kind}");
            foreach (var f in r.Failures)
                o.WriteLine($"FAIL {f}");
            o.WriteLine(r.ToString());
            return r.Failures.Count == 0 ? 0 : (int)ExitCode.CheckFailed;
        });
        return cmd;
    }

    private static Command Run()
    {
        var seed = Seed();
        var minutes = new Option<double?>("--minutes") { Description = "Stop after this many minutes (default: run until interrupted or a failure)." };
        var rounds = new Option<int?>("--rounds") { Description = "Stop after this many rounds." };
        var cmd = new Command("run",
            "Randomized rounds of workloads, pre-dump chains (random tracker, compression, block size, auto-dedup), dumps, restores and " +
            "migration policies; every restore is compared with the frozen tree and every workload checks it lost no write.");
        cmd.Options.Add(seed);
        cmd.Options.Add(minutes);
        cmd.Options.Add(rounds);
        cmd.SetAction(p =>
        {
            double? m = p.GetValue(minutes);
            if (m is <= 0 || p.GetValue(rounds) is <= 0)
                throw new UserException(ExitCode.Usage, "--minutes and --rounds must be positive");
            using var cts = new CancellationTokenSource();
            ConsoleCancelEventHandler stop = (_, e) => { e.Cancel = true; cts.Cancel(); };
            Console.CancelKeyPress += stop;
            try
            {
                var r = FuzzRun.Run(new FuzzRun.Options
                {
                    Seed = p.GetValue(seed),
                    Duration = m is double v ? TimeSpan.FromMinutes(v) : null,
                    Rounds = p.GetValue(rounds) ?? int.MaxValue,
                    Cancel = cts.Token,
                    Log = line => p.InvocationConfiguration.Error.WriteLine($"criu-sharp: fuzz: {line}"),
                });
                p.InvocationConfiguration.Output.WriteLine(r.ToString());
                return r.Failure is null ? 0 : (int)ExitCode.CheckFailed;
            }
            finally
            {
                Console.CancelKeyPress -= stop;
            }
        });
        return cmd;
    }
}

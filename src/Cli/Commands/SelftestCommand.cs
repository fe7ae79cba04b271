using System.CommandLine;
using System.Text.Json;
using CriuSharp.SimKernel.Selftests;

namespace CriuSharp.Cli;

/// <summary>
/// <c>criu-sharp selftest [NAME...]</c>: runs the kernel's soft-dirty selftests, re-expressed
/// against the simulated kernel, on the chosen architecture and kernel profile.
/// </summary>
public static class SelftestCommand
{
    public static Command Create()
    {
        var names = new Argument<string[]>("name")
        {
            Description = "Selftests to run (default: all). See --list.",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var list = new Option<bool>("--list") { Description = "List the selftests and exit." };
        var json = CommonOptions.Json();
        var kernel = new KernelOptions();
        var cmd = new Command("selftest", "Run the kernel's soft-dirty and PAGEMAP_SCAN selftests against the simulated kernel.");
        cmd.Arguments.Add(names);
        cmd.Options.Add(list);
        cmd.Options.Add(json);
        kernel.AddTo(cmd, pool: false);
        cmd.SetAction(p =>
        {
            var output = p.InvocationConfiguration.Output;
            if (p.GetValue(list))
            {
                foreach (var t in SelftestCatalog.All)
                    output.WriteLine($"{t.Name,-24} {t.Description}");
                return 0;
            }
            var chosen = new List<ISelftest>();
            foreach (var n in p.GetValue(names) ?? [])
                chosen.Add(SelftestCatalog.Find(n)
                    ?? throw new UserException(ExitCode.Usage, $"unknown selftest '{n}'", "Try 'criu-sharp selftest --list'."));
            if (chosen.Count == 0)
                chosen.AddRange(SelftestCatalog.All);
            var config = kernel.Config(p);
            var reports = chosen.Select(t => t.Run(config)).ToList();
            if (p.GetValue(json))
                output.WriteLine(JsonSerializer.Serialize(new { arch = config.Arch.Name, kernel = config.Version.Name, selftests = reports }, JsonOut.Options));
            else
                foreach (var r in reports)
                    Print(output, r, p.GetValue(CommonOptions.Verbosity) >= CliLog.Info);
            return reports.Any(r => r.Failed > 0) ? (int)ExitCode.CheckFailed : 0;
        });
        return cmd;
    }

    private static void Print(TextWriter o, SelftestReport r, bool verbose)
    {
        o.WriteLine($"{r.Name} ({r.Arch}, kernel {r.Kernel}): {r.Passed} passed, {r.Failed} failed, {r.Skipped} skipped");
        foreach (var c in r.Checks)
        {
            if (c.Outcome == CheckOutcome.Pass && !verbose)
                continue;
            string tag = c.Outcome switch { CheckOutcome.Pass => "ok  ", CheckOutcome.Fail => "FAIL", _ => "skip" };
            o.WriteLine($"  {tag} {c.Id,-6} {c.Description}{(c.Detail is null ? "" : ": " + c.Detail)}");
        }
    }
}

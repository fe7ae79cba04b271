using System.CommandLine;
using System.Text.Json;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Cli;

/// <summary>
/// <c>criu-sharp check [--all|--extra] [--feature NAME]</c>: what memory tracking the simulated
/// kernel offers, answered as <c>criu check</c> does (criu/cr-check.c): CRIU's feature names,
/// exit 0 when supported and 8 when not, an unknown name refused with the list of known ones.
/// </summary>
public static class CheckCommand
{
    /// <summary>CRIU's names (cr-check.c feature_list) for what the simulator models, then ours.</summary>
    private static readonly string[] FeatureNames = ["mem_dirty_track", "uffd", "uffd-noncoop", "pagemap_scan", "uffd_wp", "uffd_wp_async"];

    public static Command Create()
    {
        var feature = new Option<string?>("--feature")
        {
            Description = $"Check one feature by CRIU's name: {string.Join(", ", FeatureNames)}.",
        };
        var all = new Option<bool>("--all") { Description = "Check every feature, as 'criu check --all' (the simulator has no experimental ones)." };
        var extra = new Option<bool>("--extra") { Description = "Check the features needed only in some cases, as 'criu check --extra'." };
        var json = CommonOptions.Json();
        var kernel = new KernelOptions();
        var machine = new MachineOptions();
        var cmd = new Command("check", "Report which memory-change tracking the kernel and architecture offer (the machine's, or --arch/--kernel).");
        cmd.Options.Add(feature);
        cmd.Options.Add(all);
        cmd.Options.Add(extra);
        cmd.Options.Add(json);
        kernel.AddTo(cmd, pool: false);
        machine.AddTo(cmd);
        cmd.SetAction(p =>
        {
            if (machine.IsRealHost(p))
                return CheckRealHost(p, p.GetValue(feature), p.GetValue(json));
            bool explicitProfile = p.GetResult(kernel.Arch) is { Implicit: false } || p.GetResult(kernel.Kernel) is { Implicit: false };
            SimKernel.Kernel k;
            if (!explicitProfile && SimKernel.Machine.SimMachine.Exists(machine.Directory(p)))
            {
                using var m = machine.Open(p);
                k = m.Kernel;
            }
            else
                k = new SimKernel.Kernel(kernel.Config(p));
            var f = k.Features;
            var known = new Dictionary<string, bool>
            {
                ["mem_dirty_track"] = f.MemDirtyTrack,
                // Every simulated kernel with userfaultfd is newer than 4.11, which added the
                // non-cooperative events (fork, remap, remove) CRIU's uffd-noncoop checks for.
                ["uffd"] = k.Version.HasUserfaultfd,
                ["uffd-noncoop"] = k.Version.HasUserfaultfd,
                ["pagemap_scan"] = f.PagemapScan,
                ["uffd_wp"] = f.UffdWp,
                ["uffd_wp_async"] = f.UffdWpAsync,
            };
            string? one = p.GetValue(feature);
            if (one is not null && !known.ContainsKey(one))
                throw new UserException(ExitCode.Usage, $"unknown feature '{one}'", $"Known features: {string.Join(", ", FeatureNames)}.");
            var shown = one is null ? known : known.Where(kv => kv.Key == one).ToDictionary();
            var output = p.InvocationConfiguration.Output;
            var criu = Dumper.Criu.Check(new SimKernelAdapter(k));
            string tracker = Dumper.TrackerNames.Name(criu.BestTracker);
            if (p.GetValue(json))
                output.WriteLine(JsonSerializer.Serialize(new { arch = k.Arch.Name, kernel = k.Version.Name, release = k.Version.Release, features = shown.Select(kv => new { name = kv.Key, supported = kv.Value }), tracker, warnings = criu.Warnings.Select(w => w.Message) }, JsonOut.Options));
            else
            {
                output.WriteLine($"{k.Arch.Name}, kernel {k.Version.Name} ({k.Version.Release})");
                foreach (var (name, ok) in shown)
                    output.WriteLine($"  {name,-16} {(ok ? "supported" : "not supported")}");
                output.WriteLine($"  pre-dumps track writes with: {tracker}");
                foreach (var w in criu.Warnings)
                    output.WriteLine($"  warning: {w.Message}");
                // criu/cr-check.c's verdicts; missing case-specific features do not fail the check.
                if (one is null)
                    output.WriteLine(!(p.GetValue(all) || p.GetValue(extra)) || known.Values.All(v => v)
                        ? "Looks good."
                        : "Looks good but some kernel features are missing which, depending on your process tree, may cause dump or restore failure.");
            }
            if (one is not null && !known[one])
                return (int)ExitCode.Unsupported;
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// check --machine /proc: the running kernel, probed (soft-dirty by writing a page and reading
    /// its pagemap entry back). uffd_wp is what a read-only observer can use: never.
    /// </summary>
    private static int CheckRealHost(ParseResult p, string? one, bool json)
    {
        using var host = new HostKernel.LinuxHost();
        var c = host.Capabilities;
        var all = new Dictionary<string, bool>
        {
            ["mem_dirty_track"] = c.MemDirtyTrack,
            ["uffd_wp"] = c.UffdWp,
            ["uffd_wp_async"] = c.UffdWpAsync,
            ["pagemap_scan"] = c.PagemapScan,
        };
        var shown = one is null ? all : all.Where(kv => kv.Key == one).ToDictionary();
        var criu = Dumper.Criu.Check(host, Dumper.TrackerKind.Content);
        string tracker = Dumper.TrackerNames.Name(criu.BestTracker);
        var output = p.InvocationConfiguration.Output;
        string freezer = HostKernel.Freezer.FreezerRoot() is null ? "SIGSTOP/SIGCONT" : "cgroup v1 freezer";
        if (json)
            output.WriteLine(JsonSerializer.Serialize(new { arch = c.ArchName, kernel = "host", release = c.KernelVersion, features = shown, tracker, freezer }, JsonOut.Options));
        else
        {
            output.WriteLine($"{c.ArchName}, this machine's kernel ({c.KernelVersion})");
            foreach (var (name, ok) in shown)
                output.WriteLine($"  {name,-16} {(ok ? "supported" : "not supported")}");
            output.WriteLine($"  pre-dumps track writes with: {tracker}");
            output.WriteLine($"  dumps freeze with: {freezer}");
        }
        return one is not null && !all[one] ? (int)ExitCode.Unsupported : 0;
    }
}

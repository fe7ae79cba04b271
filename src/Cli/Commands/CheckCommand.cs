using CriuSharp.SimKernel.Machine;
using System.CommandLine;
using System.Text.Json;

namespace CriuSharp.Cli;

/// <summary>
/// <c>criu-sharp check [--feature NAME]</c>: what memory tracking the simulated kernel offers,
/// answered as <c>criu check --feature</c> does (exit 0 when supported, 8 when not).
/// </summary>
public static class CheckCommand
{
    private static readonly string[] FeatureNames = ["mem_dirty_track", "uffd_wp", "uffd_wp_async", "pagemap_scan"];

    public static Command Create()
    {
        var feature = new Option<string?>("--feature")
        {
            Description = "Check one feature: mem_dirty_track (soft-dirty), uffd_wp, uffd_wp_async, pagemap_scan.",
        };
        feature.AcceptOnlyFromAmong(FeatureNames);
        var json = CommonOptions.Json();
        var kernel = new KernelOptions();
        var machine = new MachineOptions();
        var cmd = new Command("check", "Report which memory-change tracking the kernel and architecture offer (the machine's, or --arch/--kernel).");
        cmd.Options.Add(feature);
        cmd.Options.Add(json);
        kernel.AddTo(cmd);
        machine.AddTo(cmd);
        cmd.SetAction(p =>
        {
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
            var all = new Dictionary<string, bool>
            {
                ["mem_dirty_track"] = f.MemDirtyTrack,
                ["uffd_wp"] = f.UffdWp,
                ["uffd_wp_async"] = f.UffdWpAsync,
                ["pagemap_scan"] = f.PagemapScan,
            };
            string? one = p.GetValue(feature);
            var shown = one is null ? all : all.Where(kv => kv.Key == one).ToDictionary();
            var output = p.InvocationConfiguration.Output;
            var criu = Dumper.Criu.Check(new SimKernelAdapter(k));
            string tracker = Dumper.TrackerNames.Name(criu.BestTracker);
            if (p.GetValue(json))
                output.WriteLine(JsonSerializer.Serialize(new { arch = k.Arch.Name, kernel = k.Version.Name, release = k.Version.Release, features = shown, tracker, warnings = criu.Warnings.Select(w => w.Message) }, JsonOut.Options));
            else
            {
                output.WriteLine($"{k.Arch.Name}, kernel {k.Version.Name} ({k.Version.Release})");
                foreach (var (name, ok) in shown)
                    output.WriteLine($"  {name,-16} {(ok ? "supported" : "not supported")}");
                output.WriteLine($"  pre-dumps track writes with: {tracker}");
                foreach (var w in criu.Warnings)
                    output.WriteLine($"  warning: {w.Message}");
            }
            if (one is not null && !all[one])
                return (int)ExitCode.Unsupported;
            return 0;
        });
        return cmd;
    }
}

using System.CommandLine;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Cli;

/// <summary>--machine DIR and --wait SECONDS: which machine directory a command works on.</summary>
public sealed class MachineOptions
{
    public Option<string> Machine { get; } = new("--machine", "-m")
    {
        Description = $"Machine directory (default: ${SimMachine.EnvironmentVariable}, else ./.criu-sharp/machine).",
        DefaultValueFactory = _ => SimMachine.DefaultDirectory,
    };

    public Option<double> Wait { get; } = new("--wait")
    {
        Description = "Seconds to wait for another command holding the machine before giving up.",
        DefaultValueFactory = _ => 30,
    };

    public void AddTo(Command c)
    {
        c.Options.Add(Machine);
        c.Options.Add(Wait);
    }

    public string Directory(ParseResult p) => Path.GetFullPath(p.GetValue(Machine)!);

    /// <summary>
    /// --machine /proc names the real host this command runs on (a machine directory is never
    /// called /proc): pre-dump, dump and check work on it, nothing else does.
    /// </summary>
    public bool IsRealHost(ParseResult p) => IsRealHostName(p.GetValue(Machine));

    public static bool IsRealHostName(string? machine) => machine is not null && machine.TrimEnd('/') == "/proc";

    /// <summary>The error for a verb that only a simulated machine can do.</summary>
    public static UserException SimulatorOnly(string verb) => new(ExitCode.Unsupported,
        $"'{verb}' needs a simulated machine: --machine /proc is the real host, where only pre-dump, dump and check work",
        "Name a machine directory (restore a real process's images into one with 'restore -D DIR --machine DIR').");

    public SimMachine Open(ParseResult p) => IsRealHost(p)
        ? throw SimulatorOnly(p.CommandResult.Command.Name)
        : SimMachine.Open(Directory(p), TimeSpan.FromSeconds(p.GetValue(Wait)));

    public SimMachine OpenOrCreate(ParseResult p, KernelConfig config) =>
        IsRealHost(p) ? throw SimulatorOnly(p.CommandResult.Command.Name) :
        SimMachine.Exists(Directory(p))
            ? SimMachine.Open(Directory(p), TimeSpan.FromSeconds(p.GetValue(Wait)))
            : SimMachine.Create(Directory(p), config, TimeSpan.FromSeconds(p.GetValue(Wait)));
}

/// <summary>-t/--tree PID, as CRIU names it.</summary>
public static class PidOption
{
    public static Option<int> Create(bool required = true) => new("--tree", "-t")
    {
        Description = "Process id.",
        Required = required,
    };

    public static SimTask Resolve(Kernel k, int pid) =>
        k.FindTask(pid) is { State: not TaskState.Dead } t
            ? t
            : throw new UserException(ExitCode.BadInput, $"no process {pid} on this machine", "List them with 'criu-sharp ps'.");
}

/// <summary>Sizes ("64MiB", "4k") and durations ("2s", "500ms", "1.5s") as users type them.</summary>
public static class Units
{
    public static ulong ParseDurationNs(string text)
    {
        var t = text.Trim().ToLowerInvariant();
        (string suffix, double scale)[] units = [("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)];
        foreach (var (suffix, scale) in units.OrderByDescending(u => u.suffix.Length))
            if (t.EndsWith(suffix, StringComparison.Ordinal)
                && double.TryParse(t[..^suffix.Length], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v)
                && v >= 0 && double.IsFinite(v))
                return (ulong)Math.Round(v * scale);
        throw new UserException(ExitCode.Usage, $"'{text}' is not a duration (examples: 2s, 500ms, 1.5s, 100us)");
    }

    public static ulong ParseAddress(string text)
    {
        var t = text.Trim();
        if (t.StartsWith("0x", StringComparison.OrdinalIgnoreCase)) t = t[2..];
        return ulong.TryParse(t, System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture, out ulong v)
            ? v
            : throw new UserException(ExitCode.Usage, $"'{text}' is not a hexadecimal address");
    }
}

using System.Diagnostics;
using System.Globalization;

namespace CriuSharp.Dumper;

/// <summary>
/// Wall time of each step of a dump on stderr, when CRIU_SHARP_TRACE_PHASES is set (for
/// profiling the real-host path; nothing is printed otherwise): one line per step,
/// <c>phase NAME WALL-MS cpu CPU-MS</c> (CPU: user+sys of the whole process during the step, so a
/// loaded machine's wall-clock noise can be told apart), and the total.
/// </summary>
internal sealed class PhaseTrace
{
    public const string EnvironmentVariable = "CRIU_SHARP_TRACE_PHASES";
    private static readonly bool Enabled = Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 };
    private readonly Stopwatch _total = Stopwatch.StartNew();
    private long _last;
    private TimeSpan _lastCpu = Enabled ? Cpu() : default;
    private readonly TimeSpan _firstCpu;

    public PhaseTrace() => _firstCpu = _lastCpu;

    private static TimeSpan Cpu()
    {
        using var self = Process.GetCurrentProcess();
        return self.TotalProcessorTime;
    }

    /// <summary>Ends the current step, named <paramref name="name"/>.</summary>
    public void Mark(string name)
    {
        if (!Enabled)
            return;
        long now = _total.ElapsedTicks;
        var cpu = Cpu();
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"phase {name} {(now - _last) * 1000.0 / Stopwatch.Frequency:F1} cpu {(cpu - _lastCpu).TotalMilliseconds:F1}"));
        _last = now;
        _lastCpu = cpu;
    }

    public void End(string what)
    {
        if (Enabled)
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"phase {what}-total {_total.Elapsed.TotalMilliseconds:F1} cpu {(Cpu() - _firstCpu).TotalMilliseconds:F1}"));
    }
}

namespace CriuSharp.Cli;

/// <summary>
/// Test-only crash injection: with CRIU_SHARP_CRASH_AT=N in the environment, the process sends
/// itself SIGKILL at the N-th crash point of the libraries (file-system steps of saving a machine or
/// writing images), so crash-safety tests kill at exact points instead of racing a timer. A run that
/// finishes without reaching N reports how many points it passed on stderr, which tells the test
/// how many points a command has.
/// </summary>
internal static class CrashHook
{
    public const string EnvironmentVariable = "CRIU_SHARP_CRASH_AT";
    /// <summary>Also set: each point passed is named on stderr ("crash point N: NAME"), so a test can aim at one.</summary>
    public const string NamesVariable = "CRIU_SHARP_CRASH_NAMES";
    private static bool _names;
    private static long _target;
    private static long _hits;

    public static bool Install()
    {
        if (Environment.GetEnvironmentVariable(EnvironmentVariable) is not { Length: > 0 } text || !long.TryParse(text, out _target))
            return false;
        SimKernel.Machine.CrashPoints.Probe = Hit;
        ImageFormat.CrashPoints.Probe = Hit;
        Installed = true;
        _names = Environment.GetEnvironmentVariable(NamesVariable) is { Length: > 0 };
        return true;
    }

    public static long Hits => Interlocked.Read(ref _hits);

    /// <summary>This run counts crash points (a crash test started it).</summary>
    public static bool Installed { get; private set; }

    private static void Hit(string name)
    {
        long n = Interlocked.Increment(ref _hits);
        if (_names)
            Console.Error.WriteLine($"criu-sharp: crash point {n}: {name}");
        if (n == _target)
        {
            // SIGKILL, like the OOM killer or a power cut: no finally blocks, no flushing.
            System.Diagnostics.Process.GetCurrentProcess().Kill();
            Thread.Sleep(Timeout.Infinite);
        }
    }
}

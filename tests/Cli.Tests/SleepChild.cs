using System.Diagnostics;
using System.Globalization;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// A `sleep 120` of this machine for the real-host tests, started through a shell so it is not our
/// child (.NET's child bookkeeping never sees its ptrace stops); killed when disposed.
/// </summary>
public sealed class SleepChild : IDisposable
{
    public SleepChild()
    {
        var psi = new ProcessStartInfo("/bin/sh", ["-c", "sleep 120 </dev/null >/dev/null 2>&1 & echo $!"]) { RedirectStandardOutput = true };
        using var sh = Process.Start(psi)!;
        Pid = int.Parse(sh.StandardOutput.ReadLine()!.Trim(), CultureInfo.InvariantCulture);
        sh.WaitForExit();
    }

    public int Pid { get; }

    public void Dispose()
    {
        try { Process.GetProcessById(Pid).Kill(); } catch (ArgumentException) { }
    }
}

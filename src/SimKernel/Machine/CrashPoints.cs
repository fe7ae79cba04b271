namespace CriuSharp.SimKernel.Machine;

/// <summary>
/// Named points between the file-system steps of saving a machine (journal batches, the state
/// rename, journal replay). Tests of crash safety install <see cref="Probe"/> to kill the process
/// at the N-th point, deterministically instead of racing a timer; unset, a hit costs one null check.
/// </summary>
public static class CrashPoints
{
    public static Action<string>? Probe { get; set; }

    public static void Hit(string name) => Probe?.Invoke(name);
}

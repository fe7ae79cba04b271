namespace CriuSharp.SimKernel.Machine;

/// <summary>
/// Named points between the file-system steps of saving a machine (journal batches, the state
/// rename, journal replay). Tests of crash safety install <see cref="Probe"/> to kill the process
/// at the N-th point, deterministically instead of racing a timer; unset, a hit costs one null check.
/// </summary>
public static class CrashPoints
{
    public static Action<string>? Probe { get; set; }

    private static readonly AsyncLocal<bool> Quiet = new();

    public static void Hit(string name)
    {
        if (Probe is { } probe && !Quiet.Value)
            probe(name);
    }

    /// <summary>
    /// Runs <paramref name="work"/> (and the tasks it starts) past no crash point: work that is not the
    /// command's own, such as migrate's in-process warm-up, must not shift the points a test aims at.
    /// </summary>
    public static T Without<T>(Func<T> work)
    {
        bool was = Quiet.Value;
        Quiet.Value = true;
        try
        {
            return work();
        }
        finally
        {
            Quiet.Value = was;
        }
    }
}

namespace CriuSharp.SimKernel.Workloads;

/// <summary>
/// What the machine and the CLI need from workloads. A workload's whole state lives in its
/// processes: registers and <see cref="SimTask.ExtraState"/> (the program and its parameters),
/// and simulated memory (its data) — so a restored process continues where it stopped.
/// </summary>
public static class WorkloadApi
{
    /// <summary>Creates the processes a workload file describes; throws <see cref="WorkloadException"/> on bad input.</summary>
    public static IReadOnlyList<SimTask> Spawn(Kernel kernel, string workloadPath) =>
        throw new NotImplementedException("workloads are being built");

    /// <summary>Does this task run a workload program?</summary>
    public static bool HasProgram(SimTask task) => task.ExtraState.Length > 0;

    /// <summary>Runs the operations due in the virtual-time interval (fromNs, toNs] at the program's rate.</summary>
    public static void Run(SimTask task, ulong fromNs, ulong toNs) =>
        throw new NotImplementedException("workloads are being built");

    /// <summary>Runs exactly <paramref name="steps"/> operations; returns how many ran (fewer if the task died).</summary>
    public static long RunSteps(SimTask task, long steps) =>
        throw new NotImplementedException("workloads are being built");

    /// <summary>The program's self-check of its own memory, as CRIU's zdtm tests do after restore.</summary>
    public static VerifyReport Verify(SimTask task) =>
        throw new NotImplementedException("workloads are being built");
}

/// <summary>Bad workload input: names the file, the line and the field.</summary>
public sealed class WorkloadException(string file, int line, string field, string message)
    : Exception($"{file}:{line}: {field}: {message}")
{
    public string File { get; } = file;
    public int Line { get; } = line;
    public string Field { get; } = field;
}

/// <summary>The result of a self-check: the first bad page's address when it failed.</summary>
public sealed record VerifyReport(int Pid, string Behaviour, bool Ok, long PagesChecked, ulong? FirstBadAddress, string? Detail);

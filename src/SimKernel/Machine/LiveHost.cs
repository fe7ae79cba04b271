using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.SimKernel.Machine;

/// <summary>
/// A host that runs its tasks' workload programs as time passes: every runnable program runs in
/// quanta of <see cref="QuantumNs"/> of virtual time (1 ms by default), in pid order. <see cref="SimMachine"/>
/// persists one in a directory; <c>migrate</c> keeps a source and a destination in memory.
/// </summary>
public class LiveHost(Kernel kernel, ulong quantumNs = LiveHost.DefaultQuantumNs) : ISimHost
{
    /// <summary>Programs run in 1 ms slices of virtual time unless told otherwise.</summary>
    public const ulong DefaultQuantumNs = 1_000_000;

    public Kernel Kernel { get; } = kernel;

    /// <summary>Length of a slice; slices end at multiples of it, so results do not depend on how time is requested.</summary>
    public ulong QuantumNs { get; } = quantumNs > 0 ? quantumNs : throw new ArgumentOutOfRangeException(nameof(quantumNs));

    public void Advance(ulong ns)
    {
        ulong end = Kernel.UptimeNs + ns;
        while (Kernel.UptimeNs < end)
        {
            ulong from = Kernel.UptimeNs;
            ulong to = Math.Min(end, from - from % QuantumNs + QuantumNs);
            foreach (var t in Kernel.Tasks.ToList())
                if (t.State == TaskState.Running && WorkloadApi.HasProgram(t))
                    WorkloadApi.Run(t, from, to);
            Kernel.AdvanceClock(to - from);
        }
    }

    /// <summary>Runs exactly <paramref name="steps"/> operations of every runnable program (no virtual time passes).</summary>
    public void RunSteps(long steps)
    {
        foreach (var t in Kernel.Tasks.ToList())
            if (t.State == TaskState.Running && WorkloadApi.HasProgram(t))
                WorkloadApi.RunSteps(t, steps);
    }
}

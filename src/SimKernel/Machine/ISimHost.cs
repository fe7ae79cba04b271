namespace CriuSharp.SimKernel.Machine;

/// <summary>
/// A simulated host as a checkpoint tool sees it: its kernel, and a way to let time pass while
/// the tool works (after a pre-dump thaws the tree, the workloads keep running and dirtying pages
/// while the images are written). A machine directory implements it; so does <see cref="ClockOnlyHost"/>.
/// </summary>
public interface ISimHost
{
    Kernel Kernel { get; }

    /// <summary>Advances virtual time by <paramref name="ns"/>, running every runnable task's program.</summary>
    void Advance(ulong ns);
}

/// <summary>A host whose tasks run no programs: time passes, nothing else happens.</summary>
public sealed class ClockOnlyHost(Kernel kernel) : ISimHost
{
    public Kernel Kernel { get; } = kernel;
    public void Advance(ulong ns) => Kernel.AdvanceClock(ns);
}

using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Migration;

/// <summary>
/// The destination's side of post-copy, shared by <c>migrate --mode postcopy|hybrid</c> and the
/// <c>lazy-pages</c> verb: the restored tree runs in periods of virtual time; its faults fetch pages
/// at once (the daemon's monitor), and what the link can still carry in each period drains the
/// remaining pages in address order (criu/uffd.c handle_remaining_pages), until none is left, the
/// source is lost, or the bound is reached.
/// </summary>
public static class PostCopyPeriods
{
    /// <summary>Virtual time between the drain's turns.</summary>
    public const ulong PeriodNs = 1_000_000;

    /// <param name="daemon">The lazy-pages daemon serving the restored tasks.</param>
    /// <param name="kernel">The destination's kernel (its clock and tasks).</param>
    /// <param name="advance">Lets the destination run for the given virtual time.</param>
    /// <param name="tasks">The lazily restored tasks.</param>
    /// <param name="link">The link the pages come over.</param>
    /// <param name="beforePeriod">Called with the elapsed time before each period (a test's lost source).</param>
    /// <returns>The virtual time the periods took.</returns>
    public static ulong Run(LazyPagesDaemon daemon, Kernel kernel, Action<ulong> advance, IReadOnlyList<LazyTask> tasks,
        LazyLinkModel link, Action<ulong>? beforePeriod = null)
    {
        ArgumentNullException.ThrowIfNull(daemon);
        ArgumentNullException.ThrowIfNull(kernel);
        ArgumentNullException.ThrowIfNull(advance);
        ArgumentNullException.ThrowIfNull(tasks);
        ArgumentNullException.ThrowIfNull(link);
        ulong perPeriod = (ulong)Math.Max(PageGeometry.PageSize, link.BytesPerSecond * PeriodNs / 1e9);
        ulong elapsed = 0;
        // Bounded: the drain moves at least a page per period, so this many periods always suffice.
        long maxPeriods = daemon.PagesRemaining + 10;
        for (long n = 0; !daemon.Complete && !daemon.Failed && n < maxPeriods; n++)
        {
            beforePeriod?.Invoke(elapsed);
            daemon.BeginPeriod();
            ulong start = kernel.UptimeNs;
            advance(PeriodNs);
            elapsed += PeriodNs;
            // A thread asleep in a fault does not run: the time it waited is taken from its schedule.
            foreach (var t in tasks)
                if (kernel.FindTask(t.Pid) is { } task)
                    WorkloadApi.Stall(task, start, daemon.TakeStall(t.Pid));
            ulong used = daemon.FaultBytesThisPeriod;
            daemon.Drain(used >= perPeriod ? (ulong)PageGeometry.PageSize : perPeriod - used);
        }
        return elapsed;
    }
}

using System.Globalization;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Traces;

/// <summary>
/// What is recorded: a kernel seen through <see cref="IKernel"/> — the simulator behind its adapter,
/// or the Linux host — and how time passes there. That is the only difference between recording a
/// simulated process and a real one: on a simulated machine time is virtual and passes only when
/// the recorder lets it (the workloads run meanwhile); on the host it passes by itself and the
/// recorder sleeps until the next sample is due.
/// </summary>
/// <param name="Kernel">The kernel the pre-dumps are taken from.</param>
/// <param name="Name">"/proc" for the host, else the machine directory (written in the index).</param>
/// <param name="RealTime">Wall-clock time (the host) rather than the kernel's virtual time.</param>
public sealed record RecordTarget(IKernel Kernel, string Name, bool RealTime)
{
    private readonly System.Diagnostics.Stopwatch _clock = System.Diagnostics.Stopwatch.StartNew();

    /// <summary>A simulated host (a machine directory, or one kept in memory).</summary>
    public static RecordTarget Simulated(SimKernel.Machine.ISimHost host, string name) => new(new SimKernel.Machine.SimKernelAdapter(host), name, false);

    public ulong NowNs => RealTime ? (ulong)_clock.Elapsed.Ticks * 100 : Kernel.UptimeNs;

    public void Wait(ulong ns)
    {
        if (!RealTime)
            Kernel.LetTimePass(ns);
        else if (ns > 0)
            Thread.Sleep(TimeSpan.FromTicks((long)(ns / 100)));
    }

    public bool Alive(int pid) => Kernel.FindTask(pid) is { Alive: true };
}

/// <summary>Options of <c>record</c>.</summary>
public sealed record RecordOptions
{
    public required int Pid { get; init; }
    public required string Output { get; init; }
    public ulong IntervalNs { get; init; } = 50_000_000;
    public ulong ForNs { get; init; } = 10_000_000_000;
    public TrackerKind Tracker { get; init; } = TrackerKind.Auto;
    /// <summary>What auto falls back to where the kernel tracks nothing (the host without soft-dirty: content).</summary>
    public TrackerKind AutoFallback { get; init; } = TrackerKind.None;
    public PageStoreOptions PageStore { get; init; } = PageStoreOptions.Lz4();
}

/// <summary>What a recording captured.</summary>
public sealed record RecordResult(string Path, TraceIndex Index, IReadOnlyList<DumperWarning> Warnings)
{
    public int Samples => Index.Samples.Count;
    public ulong MaxFrozenUs => Index.Samples.Max(s => s.FrozenUs);
    public ulong BytesStored => (ulong)Index.Samples.Sum(s => (decimal)s.BytesStored);
}

/// <summary>
/// <c>record</c>: follows a process tree, taking a pre-dump at every interval into a chain of
/// image directories (the first holds every page, each later one the pages written since, with
/// PE_PARENT entries for the rest) and noting the time and the VMAs before each freeze. The tree is
/// frozen only inside each pre-dump, for the time CRIU's pre-dump freezes it. A process that exits
/// ends the recording with what was captured, marked as ended early.
/// </summary>
public static class Recorder
{
    public static RecordResult Record(RecordTarget target, RecordOptions o, Action<int, TraceSample>? progress = null)
    {
        if (o.IntervalNs == 0)
            throw new DumperException("the interval must be longer than 0");
        if (!target.Alive(o.Pid))
            throw new DumperException("no such process to record", o.Pid);
        string outDir = Path.GetFullPath(o.Output);
        if (Directory.Exists(outDir) && Directory.EnumerateFileSystemEntries(outDir).Any())
            throw new DumperException($"{outDir} exists and is not empty; choose a new trace directory");
        Directory.CreateDirectory(outDir);

        var index = new TraceIndex
        {
            Machine = target.Name,
            Arch = target.Kernel.Capabilities.ArchName,
            Kernel = target.Kernel.Capabilities.KernelVersion,
            Pid = o.Pid,
            Comm = target.Kernel.FindTask(o.Pid)?.Comm ?? "",
            IntervalNs = o.IntervalNs,
            Compression = o.PageStore.Compression.ToString().ToLowerInvariant(),
        };
        var warnings = new List<DumperWarning>();
        var lastVmas = new Dictionary<int, List<TraceVma>>();
        ulong start = target.NowNs;
        for (int i = 0; ; i++)
        {
            ulong due = start + (ulong)i * o.IntervalNs;
            if (target.NowNs < due)
                target.Wait(due - target.NowNs);
            if (!target.Alive(o.Pid))
            {
                EndEarly(index, i, "the process exited");
                break;
            }
            if (i == 0)
                start = target.NowNs; // sample 0 is time 0, however long setting up took
            ulong t = i == 0 ? 0 : target.NowNs - start;
            // The VMAs just before the freeze: a pre-dump writes no mm image.
            var procs = new List<TraceProcess>();
            var seen = new Dictionary<int, List<TraceVma>>();
            foreach (int pid in target.Kernel.Tree(o.Pid).Where(t => t.Alive).Select(t => t.Pid))
            {
                List<TraceVma> vmas;
                try
                {
                    vmas = VmaDiff.ParseMaps(target.Kernel.Maps(pid));
                }
                catch (Exception e) when (e is KernelException or IOException)
                {
                    continue; // the task exited between listing the tree and reading its maps
                }
                seen[pid] = vmas;
                procs.Add(lastVmas.TryGetValue(pid, out var prev)
                    ? new TraceProcess { Pid = pid, VmaChanges = VmaDiff.Changes(prev, vmas) }
                    : new TraceProcess { Pid = pid, Vmas = [.. vmas.Select(v => TraceVmaRecord.From(v, null))] });
            }
            string dir = i.ToString(CultureInfo.InvariantCulture);
            DumpResult r;
            try
            {
                r = Criu.PreDump(target.Kernel, new DumpOptions
                {
                    Pid = o.Pid,
                    ImagesDir = Path.Combine(outDir, dir),
                    PrevImagesDir = i == 0 ? null : Path.Combine("..", (i - 1).ToString(CultureInfo.InvariantCulture)),
                    Tracker = o.Tracker,
                    AutoFallback = o.AutoFallback,
                    PageStore = o.PageStore,
                });
            }
            catch (Exception e) when (e is DumperException or KernelException or IOException && !target.Alive(o.Pid) && i > 0)
            {
                // Gone between the check and the freeze: its half-written directory is no sample.
                TryDelete(Path.Combine(outDir, dir));
                EndEarly(index, i, "the process exited");
                break;
            }
            if (i == 0)
                index.Tracker = TrackerNames.Name(r.Tracker);
            foreach (var w in r.Warnings)
                if (!warnings.Any(x => x.Message == w.Message))
                    warnings.Add(w);
            // Processes the pre-dump did not write (exited in between) are left out of the sample.
            var set = ImageSet.Open(Path.Combine(outDir, dir));
            procs.RemoveAll(p => !set.HasPagemap(p.Pid));
            lastVmas = seen.Where(kv => procs.Any(p => p.Pid == kv.Key)).ToDictionary();
            var s = r.Stats;
            var sample = new TraceSample
            {
                Dir = dir,
                TimeNs = t,
                // On the host the freeze is measured: the pre-dump's wall time less its writing, which
                // happens after the thaw (an upper bound: it includes opening the parent images). A
                // simulated machine's is the cost model's, so a simulated recording is deterministic.
                FrozenUs = target.RealTime && s.WallClock is { } wall ? (ulong)(wall.Total - wall.Write).Ticks / 10 : s.FrozenTime,
                PagesWritten = s.PagesWritten,
                PagesSkippedParent = s.PagesSkippedParent,
                BytesRaw = s.BytesRaw,
                BytesStored = s.BytesCompressed,
                Processes = procs,
            };
            index.Samples.Add(sample);
            progress?.Invoke(i, sample);
            if (t + o.IntervalNs > o.ForNs)
                break;
        }
        if (index.Samples.Count == 0)
            throw new DumperException("the process exited before the first sample", o.Pid);
        index.Save(outDir);
        return new RecordResult(outDir, index, warnings);
    }

    private static void EndEarly(TraceIndex index, int sample, string reason)
    {
        index.EndedEarly = true;
        index.EndReason = $"{reason} before sample {sample}";
    }

    private static void TryDelete(string dir)
    {
        try
        {
            if (Directory.Exists(dir))
                Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

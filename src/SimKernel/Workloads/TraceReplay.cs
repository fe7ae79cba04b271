using System.Collections.Concurrent;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Workloads;

/// <summary>A VMA of a recorded process at one sample: its range, protection and its name in /proc/PID/maps.</summary>
public readonly record struct TraceVma(ulong Start, ulong End, Prot Prot, string Name);

/// <summary>Receives one recorded page write: the page's address and its 4 KiB of contents.</summary>
public delegate void TraceWriteVisitor(ulong va, ReadOnlySpan<byte> page);

/// <summary>
/// A recording of a real (or simulated) process, as a sequence of samples: the first holds every
/// page, each later one the pages written since the previous sample. The simulator only sees this
/// interface; reading the recording's files (CRIU images) is done by a layer above it, registered
/// with <see cref="TraceLibrary.Register"/> when a program starts.
/// </summary>
public interface IRecordedTrace
{
    /// <summary>The trace's directory (absolute).</summary>
    string Path { get; }

    /// <summary>Samples recorded (≥ 1).</summary>
    int Samples { get; }

    /// <summary>Time of sample <paramref name="sample"/> since the first one.</summary>
    ulong TimeNs(int sample);

    /// <summary>The recording's sampling interval (the time a loop waits after the last sample).</summary>
    ulong IntervalNs { get; }

    /// <summary>Pids of the recorded tree, root first.</summary>
    IReadOnlyList<int> Pids { get; }

    /// <summary>The process's VMAs at the sample, sorted by address (empty once it is gone).</summary>
    IReadOnlyList<TraceVma> Vmas(int sample, int pid);

    /// <summary>Pages whose contents the sample stores (every present page for sample 0), in address order.</summary>
    void Writes(int sample, int pid, TraceWriteVisitor visit);

    /// <summary>Page ranges present at the previous sample and no longer present at this one (MADV_DONTNEED and the like).</summary>
    IReadOnlyList<(ulong Start, ulong End)> Dropped(int sample, int pid);

    /// <summary>The page's recorded contents at the sample; false (and zeros) when the page was not present.</summary>
    bool ReadPage(int sample, int pid, ulong va, Span<byte> destination);

    /// <summary>Distinct recorded pages usable as contents for synthetic workloads (see <see cref="ReadContentPage"/>).</summary>
    long ContentPages { get; }

    /// <summary>Recorded page number <paramref name="index"/> (0 ≤ index &lt; <see cref="ContentPages"/>): the trace's non-zero pages in a fixed order.</summary>
    void ReadContentPage(long index, Span<byte> destination);
}

/// <summary>
/// Where trace workloads find their recordings. A program that reads trace files registers an
/// opener once at start-up; opened traces are kept by path, so every command of a machine
/// (each one reopens the machine) and every process replaying the same trace share one reader.
/// </summary>
public static class TraceLibrary
{
    private static Func<string, IRecordedTrace>? _opener;
    private static readonly ConcurrentDictionary<string, IRecordedTrace> Open = new();

    /// <summary>Sets the function that opens a trace directory; it throws with a one-line message naming the bad file.</summary>
    public static void Register(Func<string, IRecordedTrace> opener) => _opener = opener;

    public static bool Registered => _opener is not null;

    /// <summary>The trace at <paramref name="path"/> (absolute), opened once per program run.</summary>
    public static IRecordedTrace Get(string path)
    {
        var opener = _opener ?? throw new InvalidOperationException("no trace reader is registered in this program");
        return Open.GetOrAdd(path, p => opener(p));
    }

    /// <summary>Forgets opened traces (a test that rewrites a trace in place).</summary>
    public static void Forget(string path) => Open.TryRemove(path, out _);
}

/// <summary>
/// The <c>trace</c> behaviour: replays a recording. Spawn maps the first sample's VMAs at their
/// recorded addresses and writes every recorded page; then, at each recorded time (scaled by
/// <c>speed</c>), the process performs the VMA changes of the next sample (munmap, mmap, mprotect),
/// drops the pages that went away (MADV_DONTNEED) and stores the sample's page contents through the
/// MMU, so soft-dirty, PAGEMAP_SCAN and userfaultfd write-protect see the recorded write set.
///
/// Registers: <see cref="Regs.Aux0"/> = next sample to apply, <see cref="Regs.Aux1"/> = loops
/// completed, <see cref="Regs.Aux2"/> = virtual time (ns) at which the current pass's first sample
/// stood; <see cref="Regs.Pc"/> counts samples applied, <see cref="Regs.Stamp"/> pages written.
/// All state lives in the task, so a dumped and restored replay carries on where it stopped.
/// </summary>
internal static class TraceReplay
{
    private const string SpecialPrefix = "[v"; // [vvar], [vdso], [vsyscall]: the kernel's, never the process's

    /// <summary>Recorded pages are CRIU image pages: 4 KiB.</summary>
    private const int RecordedPageSize = 4096;

    public static IRecordedTrace Open(ProgramImage prog) => TraceLibrary.Get(prog.TracePath!);

    private static int Pid(ProgramImage prog) => prog.TracePid ?? 0;

    public static void Init(SimTask task, ProgramImage prog)
    {
        var trace = Open(prog);
        var r = task.Registers;
        ApplyFull(task, trace, Pid(prog), 0);
        r[Regs.Aux0] = 1;
        r[Regs.Aux1] = 0;
        r[Regs.Aux2] = task.Kernel.UptimeNs;
        r[Regs.Pc] = 1;
    }

    /// <summary>Virtual time at which sample <paramref name="sample"/> of the current pass is due.</summary>
    private static ulong DueAt(IRecordedTrace trace, ProgramImage prog, ulong passStart, int sample) =>
        passStart + Scale(trace.TimeNs(sample), prog.Speed ?? 1.0);

    private static ulong Scale(ulong ns, double speed) => (ulong)Math.Round(ns / speed);

    /// <summary>Applies every sample due by <paramref name="toNs"/>.</summary>
    public static void Run(SimTask task, ProgramImage prog, ulong toNs)
    {
        var trace = Open(prog);
        var r = task.Registers;
        while (task.State == TaskState.Running)
        {
            int next = (int)r[Regs.Aux0];
            if (next >= trace.Samples)
            {
                if (prog.Loop != true)
                    return;
                ulong restart = r[Regs.Aux2] + Scale(trace.TimeNs(trace.Samples - 1) + trace.IntervalNs, prog.Speed ?? 1.0);
                if (restart > toNs)
                    return;
                Restart(task, trace, Pid(prog), restart);
                continue;
            }
            if (DueAt(trace, prog, r[Regs.Aux2], next) > toNs)
                return;
            Apply(task, trace, Pid(prog), next);
        }
    }

    /// <summary>Applies the next <paramref name="steps"/> samples regardless of time; returns how many.</summary>
    public static long RunSteps(SimTask task, ProgramImage prog, long steps)
    {
        var trace = Open(prog);
        var r = task.Registers;
        long done = 0;
        while (done < steps && task.State == TaskState.Running)
        {
            if ((int)r[Regs.Aux0] >= trace.Samples)
            {
                if (prog.Loop != true)
                    break;
                Restart(task, trace, Pid(prog), task.Kernel.UptimeNs);
            }
            else
                Apply(task, trace, Pid(prog), (int)r[Regs.Aux0]);
            done++;
        }
        return done;
    }

    private static void Restart(SimTask task, IRecordedTrace trace, int pid, ulong passStart)
    {
        var r = task.Registers;
        // Back to the first sample's state: what the last sample mapped goes, the first sample
        // is mapped and written again (a restarted program writes its memory anew).
        foreach (var v in trace.Vmas(trace.Samples - 1, pid))
            if (!v.Name.StartsWith(SpecialPrefix, StringComparison.Ordinal))
                Sys(task, task.Munmap(v.Start, v.End - v.Start));
        ApplyFull(task, trace, pid, 0);
        r[Regs.Aux0] = 1;
        r[Regs.Aux1]++;
        r[Regs.Aux2] = passStart;
        r[Regs.Pc]++;
    }

    private static void ApplyFull(SimTask task, IRecordedTrace trace, int pid, int sample)
    {
        foreach (var v in trace.Vmas(sample, pid))
        {
            if (v.Name.StartsWith(SpecialPrefix, StringComparison.Ordinal))
                continue;
            // MAP_FIXED replaces whatever the spawned process had there (its own text, stack).
            Sys(task, task.Mmap(v.Start, v.End - v.Start, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed));
        }
        WritePages(task, trace, pid, sample);
        foreach (var v in trace.Vmas(sample, pid))
            if (!v.Name.StartsWith(SpecialPrefix, StringComparison.Ordinal) && v.Prot != (Prot.Read | Prot.Write))
                Sys(task, task.Mprotect(v.Start, v.End - v.Start, v.Prot));
    }

    /// <summary>One recorded step: VMA changes, dropped pages, then the sample's writes.</summary>
    private static void Apply(SimTask task, IRecordedTrace trace, int pid, int sample)
    {
        var r = task.Registers;
        var before = trace.Vmas(sample - 1, pid);
        var after = trace.Vmas(sample, pid);
        foreach (var (start, end) in Subtract(before, after))
            Sys(task, task.Munmap(start, end - start));
        var mapped = Subtract(after, before);
        foreach (var (start, end) in mapped)
            Sys(task, task.Mmap(start, end - start, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed));
        // Pages are stored with the VMA writable (a replay writes what the process wrote, whatever
        // protection it has at the sample instant); protections are set afterwards.
        foreach (var v in after)
            if (!v.Name.StartsWith(SpecialPrefix, StringComparison.Ordinal) && (v.Prot != (Prot.Read | Prot.Write) || WasProtected(before, v)))
                Sys(task, task.Mprotect(v.Start, v.End - v.Start, Prot.Read | Prot.Write));
        foreach (var (start, end) in trace.Dropped(sample, pid))
            if (Covered(after, start, end))
                Sys(task, task.Madvise(start, end - start, Madvise.DontNeed));
        var written = WritePages(task, trace, pid, sample, mapped);
        FillMapped(task, trace, pid, sample, mapped, written);
        foreach (var v in after)
            if (!v.Name.StartsWith(SpecialPrefix, StringComparison.Ordinal) && v.Prot != (Prot.Read | Prot.Write))
                Sys(task, task.Mprotect(v.Start, v.End - v.Start, v.Prot));
        r[Regs.Aux0] = (ulong)sample + 1;
        r[Regs.Pc]++;
    }

    /// <summary>
    /// Writes the sample's stored pages that lie in its VMAs; returns the addresses written inside
    /// <paramref name="track"/> (the ranges this sample newly mapped), for <see cref="FillMapped"/>.
    /// </summary>
    private static HashSet<ulong>? WritePages(SimTask task, IRecordedTrace trace, int pid, int sample, List<(ulong Start, ulong End)>? track = null)
    {
        ulong written = 0;
        var inTrack = track is { Count: > 0 } ? new HashSet<ulong>() : null;
        // Only pages inside the sample's VMAs are written. CRIU dumps the vDSO's pages too, but the
        // replaying process has its own vDSO, left alone; and on a real host the maps are read just
        // before the freeze, so a mapping made in between has pages but no VMA until the next sample.
        var vmas = trace.Vmas(sample, pid).Where(v => !v.Name.StartsWith(SpecialPrefix, StringComparison.Ordinal)).ToArray();
        int at = 0;
        trace.Writes(sample, pid, (va, page) =>
        {
            if (task.State != TaskState.Running)
                return;
            while (at < vmas.Length && vmas[at].End <= va)
                at++;
            if (at == vmas.Length || va < vmas[at].Start)
                return;
            if (task.Write(va, page).Ok)
            {
                written++;
                if (inTrack is not null && InRanges(track!, va))
                    inTrack.Add(va);
            }
        });
        task.Registers[Regs.Stamp] += written;
        return inTrack;
    }

    /// <summary>
    /// Gives the ranges a sample newly mapped the contents the recording holds there at that
    /// sample. On a real host /proc/PID/maps is read just before the freeze, so a mapping made in
    /// between (brk growth, most often) has pages in sample k-1's pagemap but no VMA until sample
    /// k; <see cref="WritePages"/> skipped them at k-1, and at k they are in-parent (PE_PARENT)
    /// unless written again, so they are not among sample k's stored pages either. Without this
    /// the replay would hold zeros where the recording has contents.
    /// </summary>
    private static void FillMapped(SimTask task, IRecordedTrace trace, int pid, int sample, List<(ulong Start, ulong End)> mapped, HashSet<ulong>? written)
    {
        if (mapped.Count == 0)
            return;
        ulong count = 0;
        var page = new byte[RecordedPageSize];
        foreach (var (start, end) in mapped)
            for (ulong va = start; va < end && task.State == TaskState.Running; va += (ulong)page.Length)
            {
                if (written is not null && written.Contains(va))
                    continue;
                if (trace.ReadPage(sample, pid, va, page) && task.Write(va, page).Ok)
                    count++;
            }
        task.Registers[Regs.Stamp] += count;
    }

    private static bool InRanges(List<(ulong Start, ulong End)> ranges, ulong va)
    {
        foreach (var (start, end) in ranges)
            if (start <= va && va < end)
                return true;
        return false;
    }

    private static void Sys(SimTask task, SysResult r)
    {
        if (!r.Ok && task.Registers[Regs.Failure] == 0)
        {
            task.Registers[Regs.Failure] = task.Registers[Regs.Pc] + 1;
            task.Registers[Regs.FailureDetail] = (ulong)(int)r.Error;
        }
    }

    /// <summary>Did part of <paramref name="v"/> have a protection other than read-write at the previous sample?</summary>
    private static bool WasProtected(IReadOnlyList<TraceVma> before, TraceVma v)
    {
        foreach (var b in before)
            if (b.Start < v.End && v.Start < b.End && b.Prot != (Prot.Read | Prot.Write))
                return true;
        return false;
    }

    private static bool Covered(IReadOnlyList<TraceVma> vmas, ulong start, ulong end)
    {
        foreach (var v in vmas)
            if (v.Start <= start && end <= v.End && !v.Name.StartsWith(SpecialPrefix, StringComparison.Ordinal))
                return true;
        return false;
    }

    /// <summary>Address ranges covered by <paramref name="a"/> and not by <paramref name="b"/> (both sorted); the kernel's own VMAs are left out.</summary>
    internal static List<(ulong Start, ulong End)> Subtract(IReadOnlyList<TraceVma> a, IReadOnlyList<TraceVma> b)
    {
        var result = new List<(ulong, ulong)>();
        int j = 0;
        foreach (var v in a)
        {
            if (v.Name.StartsWith(SpecialPrefix, StringComparison.Ordinal))
                continue;
            ulong cur = v.Start;
            while (j < b.Count && b[j].End <= cur)
                j++;
            for (int k = j; k < b.Count && b[k].Start < v.End && cur < v.End; k++)
            {
                if (b[k].Name.StartsWith(SpecialPrefix, StringComparison.Ordinal))
                    continue;
                if (b[k].Start > cur)
                    result.Add((cur, Math.Min(b[k].Start, v.End)));
                cur = Math.Max(cur, b[k].End);
            }
            if (cur < v.End)
                result.Add((cur, v.End));
        }
        return result;
    }

    /// <summary>
    /// The self-check: the process's memory equals the recording at the sample it last applied,
    /// byte for byte — every page of every recorded VMA holds the recorded contents, or zeros where
    /// the recording has no page.
    /// </summary>
    public static VerifyReport Verify(SimTask task, ProgramImage prog)
    {
        var check = new PageChecker(task);
        var trace = Open(prog);
        var r = task.Registers;
        int sample = (int)r[Regs.Aux0] - 1;
        var expected = new byte[check.Buffer.Length];
        foreach (var v in trace.Vmas(sample, Pid(prog)))
        {
            if (v.Name.StartsWith(SpecialPrefix, StringComparison.Ordinal))
                continue;
            for (ulong va = v.Start; va < v.End; va += (ulong)expected.Length)
            {
                check.Count++;
                if (!check.ReadPage(va, check.Buffer))
                    continue;
                trace.ReadPage(sample, Pid(prog), va, expected);
                if (!check.Buffer.AsSpan().SequenceEqual(expected))
                {
                    int at = check.Buffer.AsSpan().CommonPrefixLength(expected);
                    check.Bad(va, $"sample {sample}: byte {at} is 0x{check.Buffer[at]:x2}, the recording has 0x{expected[at]:x2}");
                }
            }
        }
        if (r[Regs.Failure] != 0 && check.FirstBad is null)
            return new VerifyReport(task.Pid, "trace", false, check.Count, null,
                $"a replayed system call failed at sample {r[Regs.Failure] - 1} ({(Errno)(int)r[Regs.FailureDetail]})");
        return check.Report(task, "trace");
    }
}

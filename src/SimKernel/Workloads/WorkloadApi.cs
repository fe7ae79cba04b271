using CriuSharp.SimKernel.Mm;

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
        Spawn(kernel, WorkloadSpec.Load(kernel, workloadPath));

    /// <summary>Creates the processes of an already parsed workload.</summary>
    public static IReadOnlyList<SimTask> Spawn(Kernel kernel, WorkloadSpec spec)
    {
        var created = new List<SimTask>();
        try
        {
            foreach (var p in spec.Processes)
                SpawnOne(kernel, spec, p, created);
        }
        catch
        {
            // All or nothing: a file that fails half-way leaves no stray processes behind.
            foreach (var t in created)
            {
                kernel.Exit(t, 0, SimTask.SIGKILL);
                kernel.Reap(t);
            }
            throw;
        }
        return created;
    }

    private static void SpawnOne(Kernel kernel, WorkloadSpec spec, ProcessSpec ps, List<SimTask> created)
    {
        var prog = ps.Program;
        var task = kernel.Spawn(ps.Name);
        created.Add(task);
        var r = task.Registers;
        Rng.Seed(r, prog.Seed);
        r[Regs.DueUntilNs] = kernel.UptimeNs;
        ulong pageSize = (ulong)kernel.Arch.PageSize;
        // The churn arena keeps holes at its slots' other positions; mapped after everything else,
        // no later mapping of the process can be placed in one of those holes by the kernel.
        var order = Enumerable.Range(0, prog.Regions.Count)
            .OrderBy(i => prog.Kind == Behaviour.Churn && i == prog.Data ? 1 : 0).ToList();
        foreach (int i in order)
        {
            var region = prog.Regions[i];
            if (region.Deferred)
                continue;
            SysResult res;
            if (prog.Kind == Behaviour.Churn && i == prog.Data)
                res = Churn.MapArena(task, region, prog.SlotPages * pageSize, region.Address);
            else
            {
                SimFile? file = null;
                if (region.Path is not null)
                {
                    file = kernel.Fs.Lookup(region.Path);
                    if (file is null)
                        file = kernel.Fs.Create(region.Path, new byte[region.Size]);
                    else if (file.IsShmem)
                        throw new WorkloadException(spec.File, region.Line, $"{ps.Name}.{region.Name}.path", "not a regular file");
                }
                var flags = (region.Shared ? MapFlags.Shared : MapFlags.Private)
                            | (file is null ? MapFlags.Anonymous : 0)
                            | (region.Huge == 3 ? MapFlags.HugeTlb : 0)
                            | (region.Address != 0 ? MapFlags.FixedNoReplace : 0)
                            | (region.Populate ? MapFlags.Populate : 0);
                res = task.Mmap(region.Address, region.Size, (Prot)region.Prot, flags, file);
            }
            if (!res.Ok)
            {
                string why = res.Error switch
                {
                    Errno.EEXIST => $"0x{region.Address:x} overlaps a mapping the process already has (its executable, heap, stack or vdso)",
                    Errno.ENOMEM when region.Huge == 3 => $"the machine's hugetlb pool cannot hold {region.Size >> 20} MiB (ENOMEM; /proc/sys/vm/nr_hugepages is {kernel.Hugetlb.Default.Nr}, {kernel.Hugetlb.Default.Available} available)",
                    Errno.ENOMEM => "the kernel has no room for it (ENOMEM)",
                    var e => $"mmap failed with {e}",
                };
                throw new WorkloadException(spec.File, region.Line, $"{ps.Name}.mappings.{region.Name}", why);
            }
            r[Regs.RegionBase + i] = (ulong)res.Value;
            r[Regs.RegionLength + i] = region.Size;
            if (region.Huge is 1 or 2)
                task.Madvise((ulong)res.Value, region.Size, region.Huge == 1 ? Madvise.HugePage : Madvise.NoHugePage);
        }
        task.ExtraState = prog.Encode();

        switch (prog.Kind)
        {
            case Behaviour.KvStore:
                KvStore.Init(task, prog);
                break;
            case Behaviour.Churn:
                Churn.Init(task, prog);
                break;
            case Behaviour.Trace:
                TraceReplay.Init(task, prog);
                break;
        }
        var tasks = new List<SimTask> { task };
        if (prog.Kind == Behaviour.Threads)
            tasks.AddRange(Stamped.CloneThreads(task, prog));
        if (prog.Prefill && Stamped.Uses(prog.Kind))
            foreach (var t in tasks)
                Stamped.Prefill(t, prog);
        if (!task.Alive)
            throw new WorkloadException(spec.File, ps.Line, ps.Name, $"the process died while setting up its memory (signal {task.TermSignal}); the machine is out of memory?");
    }

    /// <summary>Does this task run a workload program?</summary>
    public static bool HasProgram(SimTask task) => task.ExtraState.Length > 0;

    /// <summary>The program a task runs (decoded from its extra state).</summary>
    public static ProgramImage Program(SimTask task) => ProgramImage.Decode(task.ExtraState);

    /// <summary>Operations due by virtual time <paramref name="ns"/> at <paramref name="rate"/> per second, counted from boot.</summary>
    public static ulong DueBy(ulong rate, ulong ns) => (ulong)((UInt128)rate * ns / 1_000_000_000UL);

    /// <summary>Runs the operations due in the virtual-time interval (fromNs, toNs] at the program's rate.</summary>
    /// <remarks>
    /// Due counts come from absolute times (floor(rate·to) − floor(rate·from)), so any slicing of
    /// time gives the same operations. Time before <see cref="Regs.DueUntilNs"/> has already been
    /// accounted (a child forked in the middle of its parent's quantum inherits the parent's
    /// remaining operations instead), so running the same interval twice does nothing twice; time
    /// a task spent frozen is simply never offered, and is not caught up after the thaw.
    /// </remarks>
    public static void Run(SimTask task, ulong fromNs, ulong toNs)
    {
        if (task.State != TaskState.Running || task.UserfaultWait is not null || !HasProgram(task))
            return;
        var prog = Program(task);
        var r = task.Registers;
        if (prog.Kind == Behaviour.Trace)
        {
            // A replay runs at its recorded times, not at a rate.
            r[Regs.DueUntilNs] = Math.Max(r[Regs.DueUntilNs], toNs);
            TraceReplay.Run(task, prog, toNs);
            return;
        }
        ulong from = Math.Max(fromNs, r[Regs.DueUntilNs]);
        if (toNs > from)
        {
            r[Regs.Owed] += DueBy(prog.Rate, toNs) - DueBy(prog.Rate, from);
            r[Regs.DueUntilNs] = toNs;
        }
        ulong owed = r[Regs.Owed];
        if (owed > 0)
            Execute(task, prog, (long)Math.Min(owed, long.MaxValue), countOwed: true);
    }

    /// <summary>
    /// The virtual time of the operation <paramref name="task"/> is executing: the operations owed
    /// in a quantum are due evenly up to <see cref="Regs.DueUntilNs"/> at the program's rate, so the
    /// one with <c>Owed</c> operations still to go was due <c>Owed / Rate</c> before that. A replay
    /// (no rate) is at the kernel's clock.
    /// </summary>
    internal static ulong OperationTimeNs(SimTask task)
    {
        ulong now = task.Kernel.UptimeNs;
        if (!ProgramImage.Holds(task.ExtraState))
            return now;
        var prog = Program(task);
        if (prog.Kind == Behaviour.Trace || prog.Rate == 0)
            return now;
        var r = task.Registers;
        ulong back = (ulong)((UInt128)r[Regs.Owed] * 1_000_000_000UL / prog.Rate);
        ulong due = r[Regs.DueUntilNs];
        return Math.Max(now, due > back ? due - back : 0);
    }

    /// <summary>
    /// The task was blocked for <paramref name="ns"/> after virtual time <paramref name="nowNs"/> (a
    /// thread asleep in a page fault until a userfaultfd monitor answered): that much of its
    /// schedule is lost, as time spent frozen is, so its next operations start that much later.
    /// </summary>
    public static void Stall(SimTask task, ulong nowNs, ulong ns)
    {
        if (!HasProgram(task) || ns == 0)
            return;
        var r = task.Registers;
        r[Regs.DueUntilNs] = Math.Max(r[Regs.DueUntilNs], nowNs) + ns;
    }

    /// <summary>Runs exactly <paramref name="steps"/> operations; returns how many ran (fewer if the task died).</summary>
    public static long RunSteps(SimTask task, long steps)
    {
        if (task.State != TaskState.Running || task.UserfaultWait is not null || !HasProgram(task) || steps <= 0)
            return 0;
        return Execute(task, Program(task), steps, countOwed: false);
    }

    private static long Execute(SimTask task, ProgramImage prog, long n, bool countOwed)
    {
        long done = prog.Kind switch
        {
            Behaviour.KvStore => KvStore.Run(task, prog, n, countOwed),
            Behaviour.Churn => Churn.Run(task, prog, n, countOwed),
            Behaviour.Script => Script.Run(task, prog, n, countOwed),
            Behaviour.Trace => TraceReplay.RunSteps(task, prog, n),
            _ => Stamped.Run(task, prog, n, countOwed),
        };
        // A task that died (SIGSEGV, OOM) owes nothing more.
        if (!task.Alive)
            task.Registers[Regs.Owed] = 0;
        return done;
    }

    /// <summary>The program's self-check of its own memory, as CRIU's zdtm tests do after restore.</summary>
    public static VerifyReport Verify(SimTask task)
    {
        if (!HasProgram(task))
            return new VerifyReport(task.Pid, "none", false, 0, null, "the task runs no workload program");
        var prog = Program(task);
        string name = prog.Kind.ToString().ToLowerInvariant();
        if (!task.Alive)
        {
            string how = task.TermSignal == SimTask.SIGSEGV ? $"killed by SIGSEGV at 0x{task.FaultAddress:x}"
                : task.TermSignal != 0 ? $"killed by signal {task.TermSignal}" : $"exited with {task.ExitCode}";
            return new VerifyReport(task.Pid, name, false, 0, task.TermSignal == SimTask.SIGSEGV ? task.FaultAddress : null, $"the task is {task.State.ToString().ToLowerInvariant()}: {how}");
        }
        var report = prog.Kind switch
        {
            Behaviour.KvStore => KvStore.Verify(task, prog),
            Behaviour.Churn => Churn.Verify(task, prog),
            Behaviour.Script => Script.Verify(task, prog),
            Behaviour.Trace => TraceReplay.Verify(task, prog),
            _ => Stamped.Verify(task, prog, name),
        };
        // An in-flight check (a read that found garbage) failed earlier even if memory looks right now.
        if (report.Ok && task.Registers[Regs.Failure] != 0)
        {
            ulong at = task.Registers[Regs.FailureDetail];
            report = report with
            {
                Ok = false,
                FirstBadAddress = at & ~((ulong)task.Kernel.Arch.PageSize - 1),
                Detail = $"operation {task.Registers[Regs.Failure] - 1} read unexpected contents at 0x{at:x}",
            };
        }
        return report;
    }
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

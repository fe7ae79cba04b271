using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;

namespace CriuSharp.SimKernel;

public enum ThpMode { Always, Madvise, Never }

/// <summary>Boot parameters of a simulated kernel.</summary>
public sealed record KernelConfig
{
    public ArchProfile Arch { get; init; } = ArchProfile.X86_64;
    public KernelVersion Version { get; init; } = KernelVersion.Modern;
    /// <summary>Physical memory of the machine.</summary>
    public long MemoryBytes { get; init; } = 16L << 30;
    public long SwapBytes { get; init; } = 8L << 30;
    /// <summary>/sys/kernel/mm/transparent_hugepage/enabled.</summary>
    public ThpMode Thp { get; init; } = ThpMode.Madvise;
    /// <summary>/sys/kernel/mm/transparent_hugepage/use_zero_page.</summary>
    public bool ThpUseZeroPage { get; init; } = true;
    /// <summary>vm.nr_hugepages at boot (hugepages= on the command line): pages of the default hugetlb size in the pool.</summary>
    public long HugePages { get; init; }
}

/// <summary>
/// One simulated kernel: physical memory, swap, the filesystem, the task table and a virtual clock.
/// Everything userspace-visible goes through <see cref="Proc"/> (the /proc files and ioctls) or the
/// system-call methods on <see cref="SimTask"/> and <see cref="MmStruct"/>.
/// </summary>
public sealed partial class Kernel
{
    internal readonly SortedDictionary<int, SimTask> _tasks = [];
    private int _nextPid = 1000;
    private long _hugeZero = -2;
    private ulong _anonVmaIds;

    public Kernel(KernelConfig? config = null) : this(config, boot: true)
    {
    }

    /// <summary>
    /// <paramref name="boot"/> false: the kernel of a saved machine, whose hugetlb pools are read
    /// from the state rather than filled from physical memory as at boot.
    /// </summary>
    private Kernel(KernelConfig? config, bool boot)
    {
        Config = config ?? new KernelConfig();
        Arch = Config.Arch;
        Version = Config.Version;
        ThpMode = Config.Thp;
        Memory = new PhysicalMemory(Arch.PageShift, Arch.PagesPerHuge, Config.MemoryBytes);
        Swap = new SwapDevice(Arch.PageSize, Config.SwapBytes);
        Fs = new SimFs(Memory) { Kernel = this };
        Proc = new ProcFs(this);
        Hugetlb = new HugetlbState(this, boot ? Config.HugePages : 0);
        Shm = new Ipc.SysvShm(this);
    }

    public KernelConfig Config { get; }
    public ArchProfile Arch { get; }
    public KernelVersion Version { get; }
    public ThpMode ThpMode { get; set; }
    /// <summary>The simulator's physical memory: internal, no checkpoint tool sees it.</summary>
    internal PhysicalMemory Memory { get; }
    public SwapDevice Swap { get; }
    public SimFs Fs { get; }
    public ProcFs Proc { get; }
    /// <summary>The hugetlb pools and their /proc and /sys files.</summary>
    public HugetlbState Hugetlb { get; }
    /// <summary>The SysV shared memory segments (shmget/shmctl here, shmat/shmdt on the task).</summary>
    public Ipc.SysvShm Shm { get; }

    /// <summary>memfd_create flags (uapi/linux/memfd.h); the hugetlb page size's log2 goes in bits 26-31.</summary>
    public const uint MfdCloexec = 1, MfdAllowSealing = 2, MfdHugetlb = 4, MfdNoexecSeal = 8, MfdExec = 0x10;

    /// <summary>
    /// memfd_create(2): an unlinked shmem file, or with MFD_HUGETLB a hugetlbfs file of the pool
    /// the size bits name ("memfd:NAME" in maps). An unknown size, or size bits without
    /// MFD_HUGETLB, is EINVAL (mm/memfd.c).
    /// </summary>
    public SysResult MemfdCreate(string name, uint flags, out SimFile? file)
    {
        file = null;
        const uint known = MfdCloexec | MfdAllowSealing | MfdHugetlb | MfdNoexecSeal | MfdExec;
        uint sizeBits = (flags >> HugetlbState.HugeShift) & HugetlbState.HugeMask;
        if ((flags & ~known & ~((uint)HugetlbState.HugeMask << HugetlbState.HugeShift)) != 0)
            return Errno.EINVAL;
        if ((flags & MfdHugetlb) == 0 && sizeBits != 0)
            return Errno.EINVAL;
        if (name.Length > 249)
            return Errno.EINVAL;
        if ((flags & MfdHugetlb) != 0)
        {
            var pool = Hugetlb.BySizeLog((int)sizeBits);
            if (pool is null)
                return Errno.EINVAL;
            file = Hugetlb.CreateFile(pool, "/memfd:" + name, 0);
        }
        else
        {
            file = Fs.CreateShmem(0);
            file.Unlinked = true;
        }
        file.OpenHandles = 1;
        return SysResult.Success();
    }

    /// <summary>close(2) of the last descriptor of a file created by <see cref="MemfdCreate"/>.</summary>
    public void Close(SimFile file)
    {
        if (file.OpenHandles > 0)
            file.OpenHandles--;
        MaybeEvictHugetlb(file);
    }

    /// <summary>Virtual time since boot, in nanoseconds (/proc/uptime).</summary>
    public ulong UptimeNs { get; internal set; }

    public void AdvanceClock(ulong ns) => UptimeNs += ns;

    /// <summary>
    /// While a userfaultfd monitor runs for a faulting thread: the virtual time of the operation
    /// that faulted (a quantum's operations are spread over it at the program's rate, while
    /// <see cref="UptimeNs"/> stays at the quantum's start). Zero otherwise.
    /// </summary>
    internal ulong FaultingOperationNs { get; set; }

    /// <summary>The clock as a monitor answering a fault reads it: <see cref="UptimeNs"/>, or the faulting operation's time.</summary>
    public ulong NowNs => Math.Max(UptimeNs, FaultingOperationNs);

    /// <summary>Soft-dirty exists only where both the architecture and the kernel build have it.</summary>
    public bool SoftDirtySupported => Arch.HasSoftDirty && Version.SoftDirtyConfigured;

    public IEnumerable<SimTask> Tasks => _tasks.Values;

    public SimTask? FindTask(int pid) => _tasks.GetValueOrDefault(pid);

    public SimTask GetTask(int pid) => FindTask(pid) ?? throw new KernelException(Errno.ESRCH, $"pid {pid}");

    /// <summary>What tracking this kernel offers, as <c>criu check --feature</c> would find it.</summary>
    public KernelFeatures Features => new(
        MemDirtyTrack: SoftDirtySupported,
        UffdWp: Version.HasUserfaultfd && Arch.HasUffdWp,
        UffdWpAsync: Version.HasUffdWpAsync && Arch.HasUffdWp,
        PagemapScan: Version.HasPagemapScan,
        PagemapScanSoftDirty: Version.HasPagemapScan && SoftDirtySupported);

    /// <summary>Creates a process as fork+exec would leave it: text and data of its executable, [stack], [vvar], [vdso].</summary>
    public SimTask Spawn(string comm, int? pid = null, int ppid = 0)
    {
        int p = AllocatePid(pid);
        var mm = new MmStruct(this);
        var task = new SimTask(this, p, comm, mm, UptimeNs) { Ppid = ppid, Pgid = p, Sid = p };
        if (ppid != 0 && FindTask(ppid) is { } parent)
        {
            task.Pgid = parent.Pgid;
            task.Sid = parent.Sid;
        }
        _tasks[p] = task;
        Exec(task);
        return task;
    }

    private int AllocatePid(int? wanted)
    {
        if (wanted is int w)
        {
            if (w <= 0 || _tasks.ContainsKey(w))
                throw new KernelException(Errno.EEXIST, $"pid {w}");
            _nextPid = Math.Max(_nextPid, w + 1);
            return w;
        }
        while (_tasks.ContainsKey(_nextPid))
            _nextPid++;
        return _nextPid++;
    }

    private void Exec(SimTask task)
    {
        var mm = task.Mm;
        int ps = Arch.PageSize;
        string exePath = "/usr/bin/" + task.Comm;
        var exe = Fs.Lookup(exePath) ?? Fs.Create(exePath, ExecutableImage(task.Comm, 3 * ps));
        mm.ExeFile = exe;
        const ulong textBase = 0x555555550000UL;
        ulong text = mm.Mmap(textBase, (ulong)(2 * ps), CriuSharp.KernelApi.Prot.Read | CriuSharp.KernelApi.Prot.Exec, MapFlags.Private | MapFlags.Fixed, exe, 0).Value is var t ? (ulong)t : 0;
        ulong data = (ulong)mm.Mmap(text + (ulong)(2 * ps), (ulong)ps, CriuSharp.KernelApi.Prot.Read | CriuSharp.KernelApi.Prot.Write, MapFlags.Private | MapFlags.Fixed, exe, 2L * ps).Value;
        mm.StartCode = text;
        mm.EndCode = text + (ulong)(2 * ps);
        mm.StartData = data;
        mm.EndData = data + (ulong)ps;
        mm.StartBrk = mm.Brk = mm.EndData;

        // Special mappings between the mmap area and the stack; vvar is VM_PFNMAP (never dumped).
        ulong special = mm.MmapBase + 0x1000_0000UL;
        mm.InsertSpecial(special, 4UL * (ulong)ps, "[vvar]",
            VmaFlags.Read | VmaFlags.MayRead | VmaFlags.PfnMap | VmaFlags.Io | VmaFlags.DontExpand | VmaFlags.DontDump);
        ulong vdso = special + 4UL * (ulong)ps;
        mm.InsertSpecial(vdso, 2UL * (ulong)ps, "[vdso]",
            VmaFlags.Read | VmaFlags.Exec | VmaFlags.MayRead | VmaFlags.MayWrite | VmaFlags.MayExec | mm.NewVmaSoftDirty);
        var vdsoImage = ExecutableImage("linux-vdso.so.1", 2 * ps);
        mm.Access(vdso, vdsoImage, write: true, force: true, out _);

        ulong stackEnd = (Arch.TaskSize & ~(Arch.HugePageSize - 1)) - Arch.HugePageSize;
        ulong stackSize = Math.Max(0x21000UL, 2UL * (ulong)ps) + (ulong)ps - 1 & Arch.PageMask;
        mm.Mmap(stackEnd - stackSize, stackSize, CriuSharp.KernelApi.Prot.Read | CriuSharp.KernelApi.Prot.Write,
            MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed | MapFlags.GrowsDown).OrThrow("exec stack");
        byte[] args = System.Text.Encoding.ASCII.GetBytes(task.Comm + "\0PATH=/usr/bin\0");
        ulong argStart = stackEnd - 0x100;
        mm.Access(argStart, args, write: true, force: true, out _);
        mm.ArgStart = argStart;
        mm.ArgEnd = argStart + (ulong)task.Comm.Length + 1;
        mm.EnvStart = mm.ArgEnd;
        mm.EnvEnd = argStart + (ulong)args.Length;
        mm.StartStack = argStart - 0x100;
    }

    /// <summary>Deterministic bytes for an executable image: an ELF magic, the name, then a pattern.</summary>
    private static byte[] ExecutableImage(string name, int size)
    {
        var b = new byte[size];
        b[0] = 0x7f; b[1] = (byte)'E'; b[2] = (byte)'L'; b[3] = (byte)'F';
        System.Text.Encoding.ASCII.GetBytes(name).AsSpan(0, Math.Min(name.Length, 48)).CopyTo(b.AsSpan(16));
        for (int i = 64; i < size; i++)
            b[i] = (byte)(i * 31 + name.Length);
        return b;
    }

    /// <summary>fork(2): a child sharing memory copy-on-write.</summary>
    public SimTask Fork(SimTask parent, int? childPid = null)
    {
        if (parent.State is TaskState.Zombie or TaskState.Dead)
            throw new KernelException(Errno.ESRCH, $"fork {parent.Pid}");
        int p = AllocatePid(childPid);
        var child = new SimTask(this, p, parent.Comm, parent.Mm.Fork(), UptimeNs)
        {
            Ppid = parent.Tgid, // getppid() of the child names the parent's thread group
            Pgid = parent.Pgid,
            Sid = parent.Sid,
            State = parent.State == TaskState.Frozen ? TaskState.Frozen : TaskState.Running,
        };
        parent.Registers.CopyTo(child.Registers, 0);
        _tasks[p] = child;
        return child;
    }

    /// <summary>
    /// clone(CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD): a new thread of
    /// <paramref name="parent"/>'s thread group, sharing its address space, with its own registers
    /// (copied from the caller, as the new thread starts from the same point) and fault counters.
    /// </summary>
    public SimTask CloneThread(SimTask parent, int? tid = null)
    {
        if (!parent.Alive)
            throw new KernelException(Errno.ESRCH, $"clone {parent.Pid}");
        var leader = GetTask(parent.Tgid);
        int t = AllocatePid(tid);
        var thread = new SimTask(this, t, leader.Comm, parent.Mm, UptimeNs)
        {
            Tgid = leader.Pid,
            Ppid = leader.Ppid,
            Pgid = leader.Pgid,
            Sid = leader.Sid,
            State = parent.State,
        };
        parent.Registers.CopyTo(thread.Registers, 0);
        _tasks[t] = thread;
        return thread;
    }

    /// <summary>The threads of a thread group (/proc/PID/task), leader first, then by tid.</summary>
    public List<SimTask> Threads(int tgid) =>
        _tasks.Values.Where(t => t.Tgid == tgid && t.State != TaskState.Dead).OrderBy(t => t.Pid == tgid ? 0 : 1).ThenBy(t => t.Pid).ToList();

    /// <summary>
    /// Ends a thread group (exit_group, or a fatal signal, which kills every thread): the other
    /// threads go at once, the leader stays a zombie until reaped, and the memory is released.
    /// A non-leader thread passed here ends the whole group too, as a fatal signal to it would.
    /// </summary>
    public void Exit(SimTask task, int exitCode, int signal = 0)
    {
        var leader = FindTask(task.Tgid) ?? task;
        if (leader.State is TaskState.Zombie or TaskState.Dead)
            return;
        foreach (var th in Threads(leader.Pid))
            if (th.IsThread)
            {
                th.ExitCode = exitCode;
                th.TermSignal = signal;
                th.State = TaskState.Dead;
                _tasks.Remove(th.Pid);
            }
        leader.ExitCode = exitCode;
        leader.TermSignal = signal;
        if (!ReferenceEquals(leader, task))
        {
            task.ExitCode = exitCode;
            task.TermSignal = signal;
        }
        leader.State = TaskState.Zombie;
        leader.Mm.Teardown();
        foreach (var c in Children(leader.Pid).ToList())
            c.Ppid = 0;
    }

    /// <summary>pthread_exit of one non-leader thread: it is gone (threads are reaped by the kernel); the address space stays.</summary>
    public void ExitThread(SimTask thread, int exitCode = 0)
    {
        if (!thread.IsThread || !thread.Alive)
            return;
        thread.ExitCode = exitCode;
        thread.State = TaskState.Dead;
        _tasks.Remove(thread.Pid);
    }

    /// <summary>Removes a zombie from the task table (wait(2) by the parent).</summary>
    public void Reap(SimTask task)
    {
        if (task.State == TaskState.Zombie)
        {
            task.State = TaskState.Dead;
            _tasks.Remove(task.Pid);
        }
    }

    /// <summary>Child processes (thread group leaders) of <paramref name="pid"/>; its own threads are not children.</summary>
    public IEnumerable<SimTask> Children(int pid) => _tasks.Values.Where(t => t.Ppid == pid && t.Pid != pid && !t.IsThread);

    /// <summary>The task and all its descendants, parents before children (pstree order).</summary>
    public List<SimTask> Tree(int rootPid)
    {
        var list = new List<SimTask>();
        var root = GetTask(rootPid);
        var queue = new Queue<SimTask>();
        queue.Enqueue(root);
        while (queue.Count > 0)
        {
            var t = queue.Dequeue();
            list.Add(t);
            foreach (var c in Children(t.Pid))
                queue.Enqueue(c);
        }
        return list;
    }

    /// <summary>Freezes a whole tree (cgroup freezer): frozen tasks run no code until thawed.</summary>
    public void Freeze(int rootPid)
    {
        foreach (var p in Tree(rootPid))
            foreach (var t in Threads(p.Pid))
                if (t.State == TaskState.Running)
                    t.State = TaskState.Frozen;
    }

    public void Thaw(int rootPid)
    {
        foreach (var p in Tree(rootPid))
            foreach (var t in Threads(p.Pid))
                if (t.State == TaskState.Frozen)
                    t.State = TaskState.Running;
    }

    /// <summary>
    /// SIGSTOP to every process of the tree (or to the one process): running and frozen tasks enter a group stop and run no
    /// code until <see cref="Continue"/> (SIGCONT), whatever thaws the freezer (signal(7)).
    /// </summary>
    public void Stop(int rootPid, bool wholeTree = true)
    {
        foreach (var p in wholeTree ? Tree(rootPid) : [GetTask(rootPid)])
            foreach (var t in Threads(p.Pid))
                if (t.State is TaskState.Running or TaskState.Frozen)
                    t.State = TaskState.Stopped;
    }

    /// <summary>SIGCONT to one process: its stopped threads run again (a frozen one stays frozen).</summary>
    public void Continue(int pid)
    {
        foreach (var t in Threads(pid))
            if (t.State == TaskState.Stopped)
                t.State = TaskState.Running;
    }

    /// <summary>
    /// iput of a hugetlbfs inode: an unlinked file that no VMA maps and nobody holds open gives its
    /// pages and reservations back to the pool.
    /// </summary>
    internal void MaybeEvictHugetlb(SimFile f)
    {
        if (!f.IsHugetlb || !f.Unlinked || f.OpenHandles > 0)
            return;
        foreach (var t in _tasks.Values)
            foreach (var v in t.Mm.Vmas)
                if (ReferenceEquals(v.File, f))
                    return;
        HugetlbState.Evict(f);
    }

    /// <summary>Visits every present entry of a shared mapping of <paramref name="f"/> with its page index.</summary>
    internal void ForEachSharedPte(SimFile f, Action<long, Mm.PteTable, int> visit)
    {
        int shift = Arch.PageShift;
        foreach (var task in _tasks.Values.Where(t => !t.IsThread))
            foreach (var v in task.Mm.Vmas)
            {
                if (!ReferenceEquals(v.File, f) || !v.IsShared || v.IsHugetlb)
                    continue;
                for (ulong va = v.Start; va < v.End; va += (ulong)Arch.PageSize)
                {
                    var t = task.Mm.Pt.PteTableFor(va);
                    if (t is null)
                    {
                        va = (va | (Arch.HugePageSize - 1)) - (ulong)Arch.PageSize + 1;
                        continue;
                    }
                    int i = task.Mm.Pt.PteIndex(va);
                    if (Arch.IsPresent(t.E[i]))
                        visit(v.PgOff + (long)((va - v.Start) >> shift), t, i);
                }
            }
    }

    /// <summary>Writeback of a file: dirty pages become clean, their shared ptes clean and write-protected (page_mkclean).</summary>
    internal void Writeback(SimFile f)
    {
        var dirty = new HashSet<long>(f.DirtyPages);
        ForEachSharedPte(f, (idx, t, i) =>
        {
            if ((t.E[i] & Arch.Dirty) != 0)
                dirty.Add(idx);
        });
        ForEachSharedPte(f, (idx, t, i) =>
        {
            if (dirty.Contains(idx))
                t.E[i] = Arch.WrProtect(t.E[i]) & ~Arch.Dirty;
        });
        f.DirtyPages.Clear();
        f.PagesWrittenBack += dirty.Count;
    }

    /// <summary>unmap_mapping_range from page <paramref name="firstIdx"/> on, in every mapping of the file (private copies too).</summary>
    internal void UnmapFileRange(SimFile f, long firstIdx)
    {
        foreach (var task in _tasks.Values.Where(t => !t.IsThread))
            foreach (var v in task.Mm.Vmas.ToList())
            {
                if (!ReferenceEquals(v.File, f))
                    continue;
                long last = v.PgOff + (long)(v.Length >> Arch.PageShift);
                if (last <= firstIdx)
                    continue;
                ulong from = v.Start + (ulong)(Math.Max(0, firstIdx - v.PgOff) << Arch.PageShift);
                task.Mm.ZapRange(v, from, v.End, removeGuards: false);
            }
    }

    /// <summary>A fresh anon_vma identity: only VMAs sharing one (or without one) may merge.</summary>
    internal ulong NextAnonVmaId() => ++_anonVmaIds;

    /// <summary>The huge zero page, allocated on first use; -1 when THP zero pages are disabled or memory is short.</summary>
    internal long HugeZeroPfn()
    {
        if (!Config.ThpUseZeroPage)
            return -1;
        if (_hugeZero == -2)
        {
            long head = Memory.AllocateHuge();
            if (head >= 0)
                for (long p = head; p < head + Arch.PagesPerHuge; p++)
                    Memory.SetKind(p, PhysicalMemory.FrameKind.Zero);
            _hugeZero = head;
        }
        return _hugeZero;
    }
}

/// <summary>The answer to <c>criu check --feature ...</c> for this kernel.</summary>
public readonly record struct KernelFeatures(bool MemDirtyTrack, bool UffdWp, bool UffdWpAsync, bool PagemapScan, bool PagemapScanSoftDirty);

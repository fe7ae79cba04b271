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

    public Kernel(KernelConfig? config = null)
    {
        Config = config ?? new KernelConfig();
        Arch = Config.Arch;
        Version = Config.Version;
        ThpMode = Config.Thp;
        Memory = new PhysicalMemory(Arch.PageShift, Arch.PagesPerHuge, Config.MemoryBytes);
        Swap = new SwapDevice(Arch.PageSize, Config.SwapBytes);
        Fs = new SimFs(Memory);
        Proc = new ProcFs(this);
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

    /// <summary>Virtual time since boot, in nanoseconds (/proc/uptime).</summary>
    public ulong UptimeNs { get; internal set; }

    public void AdvanceClock(ulong ns) => UptimeNs += ns;

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
            Ppid = parent.Pid,
            Pgid = parent.Pgid,
            Sid = parent.Sid,
            State = parent.State == TaskState.Frozen ? TaskState.Frozen : TaskState.Running,
        };
        parent.Registers.CopyTo(child.Registers, 0);
        _tasks[p] = child;
        return child;
    }

    /// <summary>Ends a task: its memory is released and it stays as a zombie until reaped.</summary>
    public void Exit(SimTask task, int exitCode, int signal = 0)
    {
        if (task.State is TaskState.Zombie or TaskState.Dead)
            return;
        task.ExitCode = exitCode;
        task.TermSignal = signal;
        task.State = TaskState.Zombie;
        task.Mm.Teardown();
        foreach (var c in Children(task.Pid).ToList())
            c.Ppid = 0;
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

    public IEnumerable<SimTask> Children(int pid) => _tasks.Values.Where(t => t.Ppid == pid && t.Pid != pid);

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
        foreach (var t in Tree(rootPid))
            if (t.State == TaskState.Running)
                t.State = TaskState.Frozen;
    }

    public void Thaw(int rootPid)
    {
        foreach (var t in Tree(rootPid))
            if (t.State == TaskState.Frozen)
                t.State = TaskState.Running;
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

using System.Runtime.CompilerServices;
using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Uffd;

namespace CriuSharp.SimKernel.Machine;

/// <summary>
/// The simulated kernel of a host behind <see cref="IKernel"/>: what a checkpoint tool may ask of
/// it, answered through the simulator's /proc, ptrace-like and system-call surface. Nothing of the
/// simulator's internals (memory, mm, page tables) passes through.
/// </summary>
public sealed class SimKernelAdapter : IKernel
{
    /// <summary>
    /// userfaultfd contexts live in the task that opened them, as a parasite-installed descriptor
    /// stays in the task's file table: a later task with the same pid has none.
    /// </summary>
    private static readonly ConditionalWeakTable<SimTask, Userfaultfd> Installed = new();
    private static readonly ConditionalWeakTable<Kernel, string> BootIds = new();

    private readonly ISimHost _host;
    private readonly Kernel _k;

    public SimKernelAdapter(ISimHost host)
    {
        _host = host;
        _k = host.Kernel;
        var f = _k.Features;
        Capabilities = new KernelCapabilities
        {
            ArchName = _k.Arch.Name,
            Arch = _k.Arch.Kind switch
            {
                ArchProfile.Family.X86_64 => ArchFamily.X86_64,
                ArchProfile.Family.Ppc64 => ArchFamily.Ppc64,
                _ => ArchFamily.Arm64,
            },
            CriuMtype = _k.Arch.CriuMtype,
            KernelVersion = _k.Version.Name,
            PageShift = _k.Arch.PageShift,
            PagemapLayout = _k.Version.PagemapLayout,
            HasPagemap2 = _k.Version.HasPagemap2,
            MemDirtyTrack = f.MemDirtyTrack,
            UffdWp = f.UffdWp,
            UffdWpAsync = f.UffdWpAsync,
            PagemapScan = f.PagemapScan,
            PagemapScanSoftDirty = f.PagemapScanSoftDirty,
            CanSplice = true,
            CanReadRegisters = true,
            CanRestore = true,
        };
    }

    /// <summary>A kernel with no host around it: time passes, no program runs.</summary>
    public SimKernelAdapter(Kernel kernel) : this(new ClockOnlyHost(kernel))
    {
    }

    public KernelCapabilities Capabilities { get; }

    public string BootId => BootIds.GetValue(_k, _ => Guid.NewGuid().ToString());

    public ulong UptimeNs => _k.NowNs;

    private SimTask Task(int pid) => _k.FindTask(pid) ?? throw new KernelException(Errno.ESRCH, $"pid {pid}");

    private static TaskInfo Info(SimTask t) => new(t.Pid, t.Ppid, t.Pgid, t.Sid, t.Comm, t.State switch
    {
        TaskState.Running => TaskRunState.Running,
        TaskState.Frozen or TaskState.Stopped => TaskRunState.Frozen,
        TaskState.Zombie => TaskRunState.Zombie,
        _ => TaskRunState.Dead,
    }, t.StartTimeNs);

    public TaskInfo? FindTask(int pid) => _k.FindTask(pid) is { } t ? Info(t) : null;

    public IReadOnlyList<TaskInfo> Tree(int rootPid) => _k.Tree(rootPid).Select(Info).ToList();

    public IReadOnlyList<int> Threads(int pid) => _k.Proc.Threads(pid);

    public string Maps(int pid) => _k.Proc.Maps(pid);
    public string Smaps(int pid) => _k.Proc.Smaps(pid);
    public string Status(int pid) => _k.Proc.Status(pid);
    public string Stat(int pid) => _k.Proc.Stat(pid);

    public void ReadPagemap(int pid, ulong va, Span<ulong> entries, PagemapLayout layout) => _k.Proc.ReadPagemap(pid, va, entries, layout);

    public SysResult ClearRefs(int pid, string value) => _k.Proc.ClearRefs(pid, value);

    public SysResult PagemapScan(int pid, ref PmScanArg arg, Span<PageRegion> vec) => _k.Proc.PagemapScan(pid, ref arg, vec);

    public SysResult ReadMemory(int pid, ulong va, Span<byte> dst) => _k.Proc.ReadMemory(pid, va, dst);

    public SysResult SplicePages(FreezeLease frozen, int pid, ulong va, Span<nint> frames)
    {
        if (frozen is not SimFreezeLease own || own.Kernel != _k || !frozen.Active)
            return Errno.EPERM;
        return _k.Proc.SplicePages(pid, va, frames);
    }

    public SysResult WriteMemory(int pid, ulong va, ReadOnlySpan<byte> data) => _k.Proc.WriteMemory(pid, va, data);

    public FreezeLease Freeze(int rootPid)
    {
        _k.Freeze(rootPid);
        return new SimFreezeLease(_k, rootPid);
    }

    private sealed class SimFreezeLease(Kernel kernel, int rootPid) : FreezeLease(rootPid)
    {
        public Kernel Kernel { get; } = kernel;

        protected override void ThawTree()
        {
            // The root may have been killed by a dump meanwhile: nothing is left to thaw.
            if (Kernel.FindTask(RootPid) is not null)
                Kernel.Thaw(RootPid);
        }

        protected override void ThawTreeStopped()
        {
            if (Kernel.FindTask(RootPid) is not null)
                Kernel.Stop(RootPid);
        }
    }

    public TaskRegisters GetRegisters(int pid)
    {
        var t = Task(pid);
        return new TaskRegisters((ulong[])t.Registers.Clone(), t.ExtraState);
    }

    public void SetRegisters(int pid, TaskRegisters registers)
    {
        var t = Task(pid);
        registers.General.AsSpan(0, Math.Min(registers.General.Length, t.Registers.Length)).CopyTo(t.Registers);
        t.ExtraState = registers.Extra;
    }

    public ulong Brk(int pid, ulong newBrk) => Task(pid).Brk(newBrk);

    public IUserfaultfd? InstalledUserfaultfd(int pid)
    {
        if (_k.FindTask(pid) is not { } t)
            return null;
        if (Installed.TryGetValue(t, out var u) && u.ApiDone && !u.Released)
            return u;
        // A machine loaded from its state file: the descriptor is still in the task (its VMAs
        // are registered with it), only this process's table of them is new.
        foreach (var v in t.Mm.Vmas)
            if (v.Uffd is { ApiDone: true, Released: false } reg)
            {
                Installed.AddOrUpdate(t, reg);
                return reg;
            }
        return null;
    }

    public SysResult OpenUserfaultfd(int pid, out IUserfaultfd? uffd)
    {
        uffd = null;
        if (_k.FindTask(pid) is not { } t)
            return Errno.ESRCH;
        var r = t.OpenUserfaultfd(out var ctx);
        if (r.Ok && ctx is not null)
        {
            Installed.AddOrUpdate(t, ctx);
            uffd = ctx;
        }
        return r;
    }

    public long? FileSize(string path) => _k.Fs.Lookup(path)?.Size;

    public SysResult OpenMapFiles(int pid, ulong va, out OpenFile? file)
    {
        file = null;
        if (_k.FindTask(pid) is not { } t)
            return Errno.ESRCH;
        var r = t.OpenMapFile(va, out var f);
        if (r.Ok && f is not null)
            file = new SimOpenFile(_k, f);
        return r;
    }

    public SysResult StatMapFiles(int pid, ulong va, out FileStat stat)
    {
        stat = default;
        if (_k.FindTask(pid) is not { } t)
            return Errno.ESRCH;
        var r = t.OpenMapFile(va, out var f);
        if (!r.Ok || f is null)
            return r;
        // The simulated filesystem keeps no owners, permissions or times: every file is root's,
        // rw-r--r--, with zero times. The device is shown in the kernel's internal encoding.
        var (major, minor) = f.Device;
        stat = new FileStat(f.Inode, (uint)(major << 20 | minor), FileStat.IfReg | 0x1A4 /* 0644 */, (uint)_k.Fs.Links(f), 0, 0, f.Size, 0, 0);
        return SysResult.Success();
    }

    public SysResult ReadMapFiles(int pid, ulong va, long offset, Span<byte> dst)
    {
        if (_k.FindTask(pid) is not { } t)
            return Errno.ESRCH;
        var r = t.OpenMapFile(va, out var f);
        if (!r.Ok || f is null)
            return r;
        if (offset < 0)
            return Errno.EINVAL;
        long n = Math.Max(0, Math.Min(dst.Length, f.Size - offset));
        if (n > 0)
            _k.Fs.Read(f, offset, dst[..(int)n]);
        return SysResult.Success(n);
    }

    /// <summary>The simulated filesystem keeps no permissions: <paramref name="mode"/> is not stored.</summary>
    public SysResult CreateFile(string path, uint mode, ReadOnlySpan<byte> contents)
    {
        var r = _k.Fs.Open(path, OpenFlags.Create | OpenFlags.Excl | OpenFlags.WriteOnly, out var of);
        if (!r.Ok || of is null)
            return r;
        var w = _k.Fs.Write(of, contents);
        return w.Ok ? SysResult.Success() : w;
    }

    public SysResult Link(string oldPath, string newPath) => _k.Fs.Link(oldPath, newPath);

    public SysResult Unlink(string path) => _k.Fs.Unlink(path);

    private sealed class SimOpenFile(Kernel kernel, SimFile file) : OpenFile
    {
        public Kernel Kernel { get; } = kernel;
        public SimFile File { get; } = file;
        public override ulong Inode => File.Inode;
        public override long Size => File.Size;
    }

    public int Spawn(string comm, int? pid = null, int ppid = 0) => _k.Spawn(comm, pid, ppid).Pid;

    public int Fork(int parentPid, int? childPid = null) => _k.Fork(Task(parentPid), childPid).Pid;

    public int CloneThread(int pid, int? tid = null) => _k.CloneThread(Task(pid), tid).Pid;

    public void Exit(int pid, int exitCode, int signal = 0)
    {
        var t = Task(pid);
        _k.Exit(t, exitCode, signal);
        _k.Reap(t);
    }

    public SysResult Mmap(int pid, ulong addr, ulong len, Prot prot, MapFlags flags, MapSource source, long offset = 0)
    {
        var t = Task(pid);
        switch (source)
        {
            case MapSource.AnonymousSource:
                return t.Mmap(addr, len, prot, flags | MapFlags.Anonymous, null, offset);
            case MapSource.FileSource f:
                return _k.Fs.Lookup(f.Path) is { } file ? t.Mmap(addr, len, prot, flags, file, offset) : Errno.ENOENT;
            case MapSource.MapFilesSource m:
                if (_k.FindTask(m.Pid) is not { } holder)
                    return Errno.ENOENT;
                var r = holder.OpenMapFile(m.Va, out SimFile? obj);
                return r.Ok && obj is not null ? t.Mmap(addr, len, prot, flags, obj, offset) : r.Ok ? Errno.ENOENT : r;
            case MapSource.OpenedSource { Handle: SimOpenFile o } when o.Kernel == _k:
                return t.Mmap(addr, len, prot, flags, o.File, offset);
            default:
                return Errno.EBADF;
        }
    }

    public SysResult Munmap(int pid, ulong addr, ulong len) => Task(pid).Munmap(addr, len);

    public SysResult Mremap(int pid, ulong oldAddr, ulong oldLen, ulong newLen, MremapFlags flags, ulong newAddr = 0) =>
        Task(pid).Mremap(oldAddr, oldLen, newLen, flags, newAddr);

    public SysResult Madvise(int pid, ulong addr, ulong len, Madvise advice) => Task(pid).Madvise(addr, len, advice);

    public SysResult PrctlSetMm(int pid, PrctlMmField field, ulong value) => Task(pid).PrctlSetMm(field, value);

    public void LetTimePass(ulong ns) => _host.Advance(ns);
}

public static class SimHostKernelApi
{
    /// <summary>The host's kernel as a checkpoint tool sees it.</summary>
    public static IKernel AsKernelApi(this ISimHost host) => new SimKernelAdapter(host);
}

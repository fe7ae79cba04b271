using System.Runtime.InteropServices;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Uffd;

namespace CriuSharp.SimKernel;

/// <summary>
/// A task's run state. <see cref="Frozen"/> is the cgroup freezer's (a dump's freeze, thawed by the
/// dump); <see cref="Stopped"/> is SIGSTOP's group stop ("T (stopped)" in /proc/PID/status), which
/// only SIGCONT ends: CRIU's --leave-stopped leaves a tree so. Appended last: the machine state
/// file stores the number.
/// </summary>
public enum TaskState { Running, Frozen, Zombie, Dead, Stopped }

/// <summary>
/// A process (one thread). Its own loads and stores go through the methods here, which refuse to
/// run while the task is frozen and turn a fatal fault into SIGSEGV (the task dies; the caller gets
/// EFAULT) rather than an exception in the tool.
/// </summary>
public sealed partial class SimTask
{
    public const int SIGKILL = 9;
    public const int SIGSEGV = 11;
    public const int SIGBUS = 7;
    /// <summary>Number of 64-bit registers kept per task (a dump saves them in the core image).</summary>
    public const int RegisterCount = 32;

    internal SimTask(Kernel kernel, int pid, string comm, MmStruct mm, ulong startTimeNs)
    {
        Kernel = kernel;
        Pid = pid;
        Tgid = pid;
        Comm = comm.Length > 15 ? comm[..15] : comm;
        Mm = mm;
        StartTimeNs = startTimeNs;
    }

    public Kernel Kernel { get; }
    public int Pid { get; }
    public int Ppid { get; internal set; }
    /// <summary>Thread group id: the leader's pid (equal to <see cref="Pid"/> for a process or its main thread).</summary>
    public int Tgid { get; internal set; }
    /// <summary>A thread made by clone(CLONE_VM | CLONE_THREAD), not a thread group leader.</summary>
    public bool IsThread => Tgid != Pid;
    /// <summary>Minor faults taken by this thread (field 10 of /proc/PID/task/TID/stat).</summary>
    public long MinFlt { get; internal set; }
    /// <summary>Major faults taken by this thread (field 12).</summary>
    public long MajFlt { get; internal set; }
    /// <summary>Write-protect faults taken by this thread (soft-dirty or uffd-wp tracking cost).</summary>
    public long WpFlt { get; internal set; }
    public int Pgid { get; internal set; }
    public int Sid { get; internal set; }
    public string Comm { get; }
    /// <summary>The task's mm: internal to the simulator (tests reach it through InternalsVisibleTo).</summary>
    internal MmStruct Mm { get; }
    /// <summary>Resident pages (VmRSS in pages), as /proc/PID/status reports it.</summary>
    public long RssPages => Mm.Rss;
    /// <summary>Swapped-out pages (VmSwap in pages).</summary>
    public long SwapPages => Mm.SwapEntries;
    /// <summary>The mapped ranges, as /proc/PID/maps lists them.</summary>
    public IReadOnlyList<(ulong Start, ulong End)> MappedRanges => Mm.Vmas.Select(v => (v.Start, v.End)).ToList();
    public TaskState State { get; internal set; }
    public ulong StartTimeNs { get; }
    public int ExitCode { get; internal set; }
    /// <summary>The signal that killed the task (11 for SIGSEGV), or 0.</summary>
    public int TermSignal { get; internal set; }
    /// <summary>The address of the access that raised SIGSEGV.</summary>
    public ulong FaultAddress { get; internal set; }
    /// <summary>Register file: instruction pointer, stack pointer and general registers of the simulated program.</summary>
    public ulong[] Registers { get; } = new ulong[RegisterCount];
    /// <summary>Opaque extra core state of the simulated program (saved and restored by dumps).</summary>
    public byte[] ExtraState { get; set; } = [];

    public bool Alive => State is TaskState.Running or TaskState.Frozen or TaskState.Stopped;

    private void EnsureRunnable()
    {
        if (State != TaskState.Running)
            throw new InvalidOperationException($"task {Pid} is {State.ToString().ToLowerInvariant()} and cannot run");
    }

    private SysResult Deliver(SysResult r, ulong addr)
    {
        if (r.Ok)
            return r;
        if (r.Error == Errno.ENOMEM)
            Kernel.Exit(this, 0, SIGKILL); // the OOM killer
        else
        {
            FaultAddress = addr;
            bool bus = Mm.PendingSigbus;
            Mm.PendingSigbus = false;
            Kernel.Exit(this, 0, bus ? SIGBUS : SIGSEGV);
        }
        return r;
    }

    /// <summary>Stores bytes as the task. A fault the kernel cannot resolve kills it with SIGSEGV.</summary>
    public SysResult Write(ulong va, ReadOnlySpan<byte> data)
    {
        EnsureRunnable();
        var span = MemoryMarshal.CreateSpan(ref MemoryMarshal.GetReference(data), data.Length);
        Mm.Current = this;
        var r = Mm.Access(va, span, write: true, force: false, out ulong at);
        Mm.Current = null;
        return Deliver(r.Ok && r.Value < data.Length ? Errno.EFAULT : r, at);
    }

    /// <summary>Loads bytes as the task.</summary>
    public SysResult Read(ulong va, Span<byte> data)
    {
        EnsureRunnable();
        Mm.Current = this;
        var r = Mm.Access(va, data, write: false, force: false, out ulong at);
        Mm.Current = null;
        return Deliver(r.Ok && r.Value < data.Length ? Errno.EFAULT : r, at);
    }

    public bool StoreU64(ulong va, ulong value)
    {
        EnsureRunnable();
        Mm.Current = this;
        bool ok = Mm.StoreU64(va, value, out var f);
        Mm.Current = null;
        if (ok)
            return true;
        Deliver(f == FaultResult.Oom ? Errno.ENOMEM : Errno.EFAULT, va);
        return false;
    }

    /// <summary>Aligned 8-byte exchange (x86 XCHG): the old value out, the new one in, one translation.</summary>
    public bool ExchangeU64(ulong va, ulong value, out ulong old)
    {
        EnsureRunnable();
        Mm.Current = this;
        bool ok = Mm.ExchangeU64(va, value, out old, out var f);
        Mm.Current = null;
        if (ok)
            return true;
        Deliver(f == FaultResult.Oom ? Errno.ENOMEM : Errno.EFAULT, va);
        return false;
    }

    public bool LoadU64(ulong va, out ulong value)
    {
        EnsureRunnable();
        Mm.Current = this;
        bool ok = Mm.LoadU64(va, out value, out var f);
        Mm.Current = null;
        if (ok)
            return true;
        Deliver(f == FaultResult.Oom ? Errno.ENOMEM : Errno.EFAULT, va);
        return false;
    }

    /// <summary>
    /// The fault a store or load takes before it is retried, as this thread (the page becomes
    /// accessible; nothing is written). Lets a caller place another thread's work between a
    /// fault and the retried instruction, as a preemption there would.
    /// </summary>
    public FaultResult FaultIn(ulong va, bool write)
    {
        EnsureRunnable();
        Mm.Current = this;
        var r = Mm.Translate(va, write, force: false).Result;
        Mm.Current = null;
        return r;
    }

    // ---- system calls ------------------------------------------------------------------

    public SysResult Mmap(ulong addr, ulong len, Prot prot, MapFlags flags, SimFile? file = null, long offset = 0)
        => Alive ? Mm.Mmap(addr, len, prot, flags, file, offset) : Errno.ESRCH;
    public SysResult Munmap(ulong addr, ulong len) => Alive ? Mm.Munmap(addr, len) : Errno.ESRCH;
    public SysResult Mprotect(ulong addr, ulong len, Prot prot) => Alive ? Mm.Mprotect(addr, len, prot) : Errno.ESRCH;
    public SysResult Mremap(ulong oldAddr, ulong oldLen, ulong newLen, MremapFlags flags, ulong newAddr = 0)
        => Alive ? Mm.Mremap(oldAddr, oldLen, newLen, flags, newAddr) : Errno.ESRCH;
    public SysResult Madvise(ulong addr, ulong len, Madvise advice) => Alive ? Mm.Madvise(addr, len, advice) : Errno.ESRCH;
    public ulong Brk(ulong newBrk) => Alive ? Mm.SetBrk(newBrk) : 0;

    /// <summary>shmat(2): attaches a SysV segment (MAP_SHARED of its file); returns the address.</summary>
    public SysResult Shmat(int shmid, ulong addr = 0, int shmflg = 0) =>
        Alive ? Kernel.Shm.Shmat(this, shmid, addr, shmflg) : Errno.ESRCH;

    /// <summary>shmdt(2).</summary>
    public SysResult Shmdt(ulong addr) => Alive ? Kernel.Shm.Shmdt(this, addr) : Errno.ESRCH;

    /// <summary>userfaultfd(2): a new context on this task's address space.</summary>
    public SysResult OpenUserfaultfd(out Userfaultfd? ctx)
    {
        ctx = null;
        if (!Kernel.Version.HasUserfaultfd)
            return Errno.ENOSYS;
        if (!Alive)
            return Errno.ESRCH;
        ctx = new Userfaultfd(Mm);
        return SysResult.Success();
    }

    /// <summary>prctl(PR_SET_MM, field, value): how a restorer puts back the mm layout fields.</summary>
    public SysResult PrctlSetMm(PrctlMmField field, ulong value)
    {
        if (!Alive)
            return Errno.ESRCH;
        if (value >= Kernel.Arch.TaskSize)
            return Errno.EINVAL;
        var mm = Mm;
        switch (field)
        {
            case PrctlMmField.StartCode: mm.StartCode = value; break;
            case PrctlMmField.EndCode: mm.EndCode = value; break;
            case PrctlMmField.StartData: mm.StartData = value; break;
            case PrctlMmField.EndData: mm.EndData = value; break;
            case PrctlMmField.StartStack: mm.StartStack = value; break;
            case PrctlMmField.StartBrk: mm.StartBrk = value; break;
            case PrctlMmField.Brk: mm.Brk = value; break;
            case PrctlMmField.ArgStart: mm.ArgStart = value; break;
            case PrctlMmField.ArgEnd: mm.ArgEnd = value; break;
            case PrctlMmField.EnvStart: mm.EnvStart = value; break;
            case PrctlMmField.EnvEnd: mm.EnvEnd = value; break;
            default: return Errno.EINVAL;
        }
        return SysResult.Success();
    }

    /// <summary>
    /// open("/proc/PID/map_files/START-END"): the file or shmem object behind a mapping, so another
    /// process can map the same shared memory (how CRIU restores MAP_SHARED anonymous memory).
    /// </summary>
    public SysResult OpenMapFile(ulong va, out SimFile? file)
    {
        file = Alive ? Mm.Find(va)?.File : null;
        return file is null ? Errno.ENOENT : SysResult.Success();
    }

    /// <summary>Pins the page at <paramref name="va"/> as FOLL_PIN would (for the clear_refs exception C2).</summary>
    public SysResult PinPage(ulong va)
    {
        var (r, pfn) = Mm.Translate(va, write: true, force: false);
        if (r != FaultResult.Ok)
            return Errno.EFAULT;
        Mm.HasPinned = true;
        Mm.PinnedPfns.Add(pfn);
        return SysResult.Success();
    }

    public override string ToString() => $"{Pid} {Comm} {State}";
}

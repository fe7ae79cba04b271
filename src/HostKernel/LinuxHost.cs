using System.Globalization;
using System.Runtime.InteropServices;
using CriuSharp.KernelApi;

namespace CriuSharp.HostKernel;

/// <summary>
/// <see cref="IKernel"/> over the Linux kernel this process runs on, for checkpointing real
/// processes: /proc/PID/{maps,smaps,status,stat,pagemap}, the PAGEMAP_SCAN ioctl,
/// process_vm_readv, ptrace (registers only) and the cgroup v1 freezer (else SIGSTOP).
/// <para>
/// It only ever reads a process: memory writes, splicing, userfaultfd installation and every
/// call restore needs are refused (EOPNOTSUPP or <see cref="KernelNotSupportedException"/>),
/// and the freeze always ends in a thaw that returns each task to where it was.
/// </para>
/// </summary>
public sealed class LinuxHost : IKernel, IDisposable
{
    /// <summary>The name that selects this kernel on the command line (--machine /proc).</summary>
    public const string MachineName = "/proc";

    private readonly Dictionary<int, Pagemap> _pagemaps = [];
    private readonly Lock _lock = new();
    private HostFreezeLease? _frozen;

    /// <summary>How long the cgroup freezer may take to freeze a tree (CRIU's --timeout).</summary>
    public TimeSpan FreezeTimeout { get; init; } = Freezer.DefaultTimeout;

    public LinuxHost(bool readRegisters = true)
    {
        ReadRegisters = readRegisters;
        var arch = RuntimeInformation.ProcessArchitecture;
        var family = arch switch
        {
            Architecture.X64 => ArchFamily.X86_64,
            Architecture.Arm64 => ArchFamily.Arm64,
            Architecture.Ppc64le => ArchFamily.Ppc64,
            _ => throw new KernelNotSupportedException($"checkpointing on {arch}"),
        };
        int pageShift = System.Numerics.BitOperations.Log2((uint)Environment.SystemPageSize);
        bool scan = Tracking.PagemapScan;
        bool softDirty = Tracking.SoftDirty;
        Capabilities = new KernelCapabilities
        {
            ArchName = family switch { ArchFamily.X86_64 => "x86_64", ArchFamily.Arm64 => "arm64", _ => "ppc64" },
            Arch = family,
            CriuMtype = family switch { ArchFamily.X86_64 => 1, ArchFamily.Arm64 => 3, _ => 4 },
            KernelVersion = File.ReadAllText("/proc/sys/kernel/osrelease").Trim(),
            PageShift = pageShift,
            PagemapLayout = PagemapLayout.Modern,
            MemDirtyTrack = softDirty,
            PagemapScan = scan,
            PagemapScanSoftDirty = scan && softDirty,
            // Write-protect tracking needs a userfaultfd inside the task (CRIU's parasite); a
            // read-only observer cannot install one.
            UffdWp = false,
            UffdWpAsync = false,
            CanSplice = true,
            SpliceCopies = true,
            // process_vm_readv takes the target's mmap lock for reading only.
            ConcurrentReads = true,
            CanReadRegisters = readRegisters,
            CanRestore = false,
        };
    }

    /// <summary>Seize the frozen tree with ptrace to read registers (else registers are not available).</summary>
    public bool ReadRegisters { get; }

    public KernelCapabilities Capabilities { get; }

    public string BootId => File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim();

    public ulong UptimeNs => ProcFs.UptimeNs();

    /// <summary>How the last <see cref="Freeze"/> stopped the tree, and why registers could not be read (null when they could).</summary>
    public FreezeMethod? LastFreezeMethod { get; private set; }
    public string? RegistersUnavailable { get; private set; }

    // ---- tasks ---------------------------------------------------------------------------------

    public TaskInfo? FindTask(int pid)
    {
        string stat;
        try
        {
            stat = File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
        return ParseTask(pid, stat);
    }

    private static TaskInfo ParseTask(int pid, string stat)
    {
        int open = stat.IndexOf('('), close = stat.LastIndexOf(')');
        string comm = stat[(open + 1)..close];
        var f = ProcFs.StatFieldsAfterComm(stat);
        // f[0] = state (field 3), f[1] = ppid, f[2] = pgrp, f[3] = session, f[19] = starttime (field 22).
        var state = f[0][0] switch
        {
            'Z' => TaskRunState.Zombie,
            'X' or 'x' => TaskRunState.Dead,
            'T' or 't' => TaskRunState.Frozen,
            _ => TaskRunState.Running,
        };
        ulong start = ulong.Parse(f[19], CultureInfo.InvariantCulture) * (1_000_000_000UL / ProcFs.ClockTicks);
        return new TaskInfo(pid, Int(f[1]), Int(f[2]), Int(f[3]), comm, state, start);
    }

    private static int Int(string s) => int.Parse(s, CultureInfo.InvariantCulture);

    public IReadOnlyList<TaskInfo> Tree(int rootPid)
    {
        if (!ProcFs.Exists(rootPid))
            throw new KernelException(Errno.ESRCH, $"no process {rootPid}");
        var list = new List<TaskInfo>();
        foreach (var (pid, _) in Wrap(() => ProcFs.Tree(rootPid)))
            if (FindTask(pid) is { } t)
                list.Add(t);
        if (list.Count == 0)
            throw new KernelException(Errno.ESRCH, $"process {rootPid} exited");
        return list;
    }

    public IReadOnlyList<int> Threads(int pid)
    {
        var tids = ProcFs.Threads(pid);
        if (tids.Count == 0)
            throw new KernelException(Errno.ESRCH, $"no process {pid}");
        // /proc/PID/task lists in the kernel's order; CRIU's pstree and restore want the leader first.
        tids.Sort((a, b) => a == pid ? -1 : b == pid ? 1 : a.CompareTo(b));
        return tids;
    }

    // ---- /proc text ------------------------------------------------------------------------------

    public string Maps(int pid) => Wrap(() => ProcFs.Read(pid, "maps"));
    public string Smaps(int pid) => Wrap(() => ProcFs.Read(pid, "smaps"));
    public string Status(int pid) => Wrap(() => ProcFs.Read(pid, "status"));
    public string Stat(int pid) => Wrap(() => ProcFs.Read(pid, "stat"));

    public void ReadPagemap(int pid, ulong va, Span<ulong> entries, PagemapLayout layout)
    {
        if (layout != PagemapLayout.Modern)
            throw new KernelException(Errno.ENOENT, $"/proc/{pid}/{(layout == PagemapLayout.Pagemap2 ? "pagemap2" : "pagemap (v1 layout)")}");
        var pm = PagemapOf(pid);
        try
        {
            pm.Read(va, entries, Capabilities.PageShift);
        }
        catch (HostKernelException e)
        {
            throw ToKernel(e);
        }
    }

    public SysResult ClearRefs(int pid, string value)
    {
        // Only resets the kernel's tracking bits (fs/proc/task_mmu.c clear_refs_write); the
        // process's memory is untouched.
        try
        {
            File.WriteAllText($"/proc/{pid}/clear_refs", value);
            return SysResult.Success();
        }
        catch (UnauthorizedAccessException) { return Errno.EACCES; }
        catch (DirectoryNotFoundException) { return Errno.ESRCH; }
        catch (IOException) { return ProcFs.Exists(pid) ? Errno.EINVAL : Errno.ESRCH; }
    }

    public SysResult PagemapScan(int pid, ref PmScanArg arg, Span<PageRegion> vec)
    {
        // Write-protecting flags change the task's page tables; a read-only observer never asks.
        if ((arg.Flags & (PageCategory.ScanWpMatching)) != 0)
            return Errno.EOPNOTSUPP;
        Pagemap pm;
        try
        {
            pm = PagemapOf(pid);
        }
        catch (KernelException e)
        {
            return e.Errno;
        }
        var regions = MemoryMarshal.Cast<PageRegion, Pagemap.PageRegion>(vec);
        try
        {
            int n = pm.Scan(arg.Start, arg.End, arg.CategoryMask, arg.CategoryAnyofMask, arg.ReturnMask,
                arg.VecLen == 0 ? [] : regions[..(int)Math.Min((ulong)regions.Length, arg.VecLen)], out ulong walkEnd,
                arg.Flags, arg.CategoryInverted, arg.MaxPages);
            arg.WalkEnd = walkEnd;
            return SysResult.Success(n);
        }
        catch (HostKernelException e)
        {
            return (Errno)e.Errno;
        }
    }

    // ---- memory --------------------------------------------------------------------------------

    /// <summary>Test hook: runs before every memory read (a test makes the process exit mid-dump here).</summary>
    internal Action<int>? BeforeRead { get; set; }

    public SysResult ReadMemory(int pid, ulong va, Span<byte> dst)
    {
        BeforeRead?.Invoke(pid);
        try
        {
            ProcessMemory.Read(pid, va, dst);
            return SysResult.Success(dst.Length);
        }
        catch (HostKernelException e)
        {
            return (Errno)(e.Errno == 0 ? (int)Errno.EIO : e.Errno);
        }
    }

    /// <summary>
    /// vmsplice has no equivalent for an outside observer, so the pages are copied (one
    /// process_vm_readv per call) into staging memory that belongs to the freeze and is freed
    /// by the thaw; the addresses handed out point there. A dump therefore holds a copy of what
    /// it dumps until it thaws the tree.
    /// </summary>
    public unsafe SysResult SplicePages(FreezeLease frozen, int pid, ulong va, Span<nint> frames)
    {
        if (frozen is not HostFreezeLease lease || !lease.Active || !ReferenceEquals(lease, _frozen))
            return Errno.EPERM;
        BeforeRead?.Invoke(pid);
        int pageSize = Capabilities.PageSize;
        long bytes = (long)frames.Length * pageSize;
        byte* dst = lease.Stage(bytes);
        try
        {
            ProcessMemory.Read(pid, va, new Span<byte>(dst, checked((int)bytes)));
        }
        catch (HostKernelException e)
        {
            return (Errno)(e.Errno == 0 ? (int)Errno.EIO : e.Errno);
        }
        for (int i = 0; i < frames.Length; i++)
            frames[i] = (nint)(dst + (long)i * pageSize);
        return SysResult.Success(frames.Length);
    }

    /// <summary>A real process is never written to.</summary>
    public SysResult WriteMemory(int pid, ulong va, ReadOnlySpan<byte> data) => Errno.EOPNOTSUPP;

    // ---- freezer, ptrace -------------------------------------------------------------------------

    public FreezeLease Freeze(int rootPid)
    {
        Freezer fz;
        try
        {
            fz = Freezer.Freeze(rootPid, timeout: FreezeTimeout);
        }
        catch (HostKernelException e)
        {
            throw ToKernel(e);
        }
        Ptrace? pt = null;
        RegistersUnavailable = null;
        if (ReadRegisters)
        {
            pt = new Ptrace();
            if (pt.SeizeAll(fz.Pids))
            {
                try
                {
                    // A task in a frozen cgroup traps only once it runs again: thaw the cgroup and
                    // let the pending PTRACE_INTERRUPT stop each thread before it returns to user space.
                    if (fz.Method == FreezeMethod.CgroupFreezer)
                        fz.ThawCgroupKeepingTasks();
                    pt.WaitStopped();
                    fz.LeaveCgroupKeepingStops();
                }
                catch
                {
                    // No lease exists yet to thaw the tree: let it go here, never leave it stopped.
                    pt.Dispose();
                    fz.Thaw();
                    throw;
                }
            }
            else
            {
                RegistersUnavailable = pt.Error;
                pt = null;
            }
        }
        else
            RegistersUnavailable = "registers not requested";
        LastFreezeMethod = fz.Method;
        var lease = new HostFreezeLease(rootPid, fz, pt, this);
        _frozen = lease;
        return lease;
    }

    private sealed unsafe class HostFreezeLease(int root, Freezer freezer, Ptrace? ptrace, LinuxHost host) : FreezeLease(root)
    {
        public Ptrace? Ptrace { get; } = ptrace;

        /// <summary>Staging memory for <see cref="SplicePages"/>, freed on thaw.</summary>
        public new byte* Stage(long bytes) => base.Stage(bytes);

        /// <summary>
        /// Staging is fresh anonymous memory that a dump fills once: asked for as transparent huge
        /// pages (MADV_HUGEPAGE, which THP's default "madvise" mode honours), it takes one fault
        /// per 2 MiB instead of one per 4 KiB page. Without THP it is ordinary memory.
        /// </summary>
        protected override void* AllocateStaging(nuint size)
        {
            void* p = Interop.Libc.Mmap(null, size, Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE, Interop.Libc.MAP_PRIVATE | Interop.Libc.MAP_ANONYMOUS, -1, 0);
            if (p == (void*)-1)
                throw new KernelException(Errno.ENOMEM, $"staging memory of {size} bytes: mmap failed (errno {Marshal.GetLastPInvokeError()})");
            Interop.Libc.Madvise(p, size, Interop.Libc.MADV_HUGEPAGE); // advice only: EINVAL without THP is fine
            return p;
        }

        protected override void FreeStaging(void* chunk, nuint size) => Interop.Libc.Munmap(chunk, size);

        protected override void ThawTree()
        {
            // Detach first: a seized thread resumes (or, after SIGSTOP, returns to its group stop),
            // then the freezer puts every task back where it was.
            Ptrace?.Dispose();
            freezer.Thaw();
            host.ClosePagemaps();
            if (ReferenceEquals(host._frozen, this))
                host._frozen = null;
        }

        /// <summary>
        /// SIGSTOP is queued while the tasks cannot act on it (frozen, ptrace-stopped); once the
        /// tracer detaches and the freezer thaws, each dequeues it untraced and group-stops.
        /// </summary>
        protected override void ThawTreeStopped()
        {
            try
            {
                freezer.QueueStop();
            }
            finally
            {
                ThawTree();
            }
        }
    }

    public TaskRegisters GetRegisters(int pid)
    {
        var pt = _frozen?.Ptrace ?? throw new KernelException(Errno.EPERM, $"registers of {pid}: {RegistersUnavailable ?? "the task is not seized"}");
        var regs = pt.GetRegs(pid) ?? throw new KernelException(Errno.EPERM, $"PTRACE_GETREGSET of {pid}");
        var raw = new byte[regs.Length * 8];
        Buffer.BlockCopy(regs, 0, raw, 0, raw.Length);
        if (Capabilities.Arch != ArchFamily.X86_64 || regs.Length < UserRegsX86.Count)
            return new TaskRegisters(regs, raw);
        // The general registers in the order the simulator keeps them (and the core writer reads):
        // ip, sp, ax, bx, cx, dx, si, di, bp, r8..r15. The whole struct user_regs_struct rides
        // along as the extra state.
        ulong[] g =
        [
            regs[UserRegsX86.Rip], regs[UserRegsX86.Rsp], regs[UserRegsX86.Rax], regs[UserRegsX86.Rbx],
            regs[UserRegsX86.Rcx], regs[UserRegsX86.Rdx], regs[UserRegsX86.Rsi], regs[UserRegsX86.Rdi],
            regs[UserRegsX86.Rbp], regs[UserRegsX86.R8], regs[UserRegsX86.R9], regs[UserRegsX86.R10],
            regs[UserRegsX86.R11], regs[UserRegsX86.R12], regs[UserRegsX86.R13], regs[UserRegsX86.R14], regs[UserRegsX86.R15],
        ];
        return new TaskRegisters(g, raw);
    }

    /// <summary>Word indexes of x86_64 struct user_regs_struct (arch/x86/include/asm/user_64.h).</summary>
    private static class UserRegsX86
    {
        public const int R15 = 0, R14 = 1, R13 = 2, R12 = 3, Rbp = 4, Rbx = 5, R11 = 6, R10 = 7, R9 = 8, R8 = 9,
            Rax = 10, Rcx = 11, Rdx = 12, Rsi = 13, Rdi = 14, OrigRax = 15, Rip = 16, Cs = 17, Eflags = 18, Rsp = 19, Ss = 20, Count = 27;
    }

    public void SetRegisters(int pid, TaskRegisters registers) => throw new KernelNotSupportedException("setting registers of a real process");

    public ulong Brk(int pid, ulong newBrk)
    {
        if (newBrk != 0)
            throw new KernelNotSupportedException("brk in a real process");
        // brk(0) as the task would see it: the end of [heap], else start_brk (stat field 47).
        foreach (var line in Maps(pid).Split('\n'))
            if (line.EndsWith("[heap]", StringComparison.Ordinal))
                return ulong.Parse(line[(line.IndexOf('-') + 1)..line.IndexOf(' ')], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        var f = ProcFs.StatFieldsAfterComm(Stat(pid));
        return f.Length > 44 ? ulong.Parse(f[44], CultureInfo.InvariantCulture) : 0;
    }

    // ---- userfaultfd -----------------------------------------------------------------------------

    public IUserfaultfd? InstalledUserfaultfd(int pid) => null;

    public SysResult OpenUserfaultfd(int pid, out IUserfaultfd? uffd)
    {
        uffd = null;
        return Errno.EOPNOTSUPP;
    }

    // ---- files -----------------------------------------------------------------------------------

    public long? FileSize(string path)
    {
        var fi = new FileInfo(path);
        return fi.Exists ? fi.Length : null;
    }

    /// <summary>Mapping a real process's file elsewhere is a restore step; a read-only observer does not.</summary>
    public SysResult OpenMapFiles(int pid, ulong va, out OpenFile? file)
    {
        file = null;
        return Errno.EOPNOTSUPP;
    }

    /// <summary>/proc/PID/map_files/START-END of the mapping that holds <paramref name="va"/>, or null.</summary>
    private string? MapFilesPath(int pid, ulong va)
    {
        foreach (var line in Maps(pid).Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            int dash = line.IndexOf('-'), sp = line.IndexOf(' ');
            if (dash < 0 || sp < dash)
                continue;
            var start = ulong.Parse(line.AsSpan(0, dash), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            var end = ulong.Parse(line.AsSpan(dash + 1, sp - dash - 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            if (start <= va && va < end)
                return $"/proc/{pid}/map_files/{line[..sp]}";
        }
        return null;
    }

    /// <summary>statx(2) of the map_files link, which follows it to the mapped file (also when unlinked).</summary>
    public unsafe SysResult StatMapFiles(int pid, ulong va, out FileStat stat)
    {
        stat = default;
        if (MapFilesPath(pid, va) is not { } path)
            return Errno.ENOENT;
        var buf = stackalloc byte[256];
        if (Interop.Libc.Statx(Interop.Libc.AT_FDCWD, path, 0, Interop.Libc.STATX_BASIC_STATS, buf) != 0)
            return (Errno)Marshal.GetLastPInvokeError();
        // struct statx offsets: nlink 16, uid 20, gid 24, mode 28 (u16), ino 32, size 40,
        // atime 64, mtime 112 (s64 seconds, u32 nanoseconds), dev_major 136, dev_minor 140.
        static long Ns(byte* t) => *(long*)t * 1_000_000_000 + *(uint*)(t + 8);
        uint dev = (*(uint*)(buf + 136) << 20) | *(uint*)(buf + 140);
        stat = new FileStat(*(ulong*)(buf + 32), dev, *(ushort*)(buf + 28), *(uint*)(buf + 16), *(uint*)(buf + 20), *(uint*)(buf + 24),
            *(long*)(buf + 40), Ns(buf + 64), Ns(buf + 112));
        return SysResult.Success();
    }

    /// <summary>pread(2) of the map_files link (open needs CAP_SYS_ADMIN, as for CRIU); only reads.</summary>
    public SysResult ReadMapFiles(int pid, ulong va, long offset, Span<byte> dst)
    {
        if (MapFilesPath(pid, va) is not { } path)
            return Errno.ENOENT;
        try
        {
            using var h = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
            return SysResult.Success(RandomAccess.Read(h, dst, offset));
        }
        catch (UnauthorizedAccessException)
        {
            return Errno.EPERM;
        }
        catch (IOException)
        {
            return Errno.EIO;
        }
    }

    public SysResult CreateFile(string path, uint mode, ReadOnlySpan<byte> contents) => throw NoRestore("creating a ghost file");
    public SysResult Link(string oldPath, string newPath) => throw NoRestore("link");
    public SysResult Unlink(string path) => throw NoRestore("unlink");

    // ---- restore: only a simulated machine can ------------------------------------------------

    private static KernelNotSupportedException NoRestore(string what) => new($"{what} on the real host (restore into a simulated machine instead)");

    public int Spawn(string comm, int? pid = null, int ppid = 0) => throw NoRestore("creating a task");
    public int Fork(int parentPid, int? childPid = null) => throw NoRestore("fork");
    public int CloneThread(int pid, int? tid = null) => throw NoRestore("creating a thread");
    public void Exit(int pid, int exitCode, int signal = 0) => throw NoRestore("ending a task");
    public SysResult Mmap(int pid, ulong addr, ulong len, Prot prot, MapFlags flags, MapSource source, long offset = 0) => throw NoRestore("mmap");
    public SysResult Munmap(int pid, ulong addr, ulong len) => throw NoRestore("munmap");
    public SysResult Mremap(int pid, ulong oldAddr, ulong oldLen, ulong newLen, MremapFlags flags, ulong newAddr = 0) => throw NoRestore("mremap");
    public SysResult Madvise(int pid, ulong addr, ulong len, Madvise advice) => throw NoRestore("madvise");
    public SysResult PrctlSetMm(int pid, PrctlMmField field, ulong value) => throw NoRestore("prctl(PR_SET_MM)");

    /// <summary>Real time passes by itself.</summary>
    public void LetTimePass(ulong ns)
    {
    }

    // ---- plumbing --------------------------------------------------------------------------------

    private Pagemap PagemapOf(int pid)
    {
        lock (_lock)
        {
            if (_pagemaps.TryGetValue(pid, out var pm))
                return pm;
            try
            {
                pm = new Pagemap(pid);
            }
            catch (HostKernelException e)
            {
                throw ToKernel(e);
            }
            _pagemaps[pid] = pm;
            return pm;
        }
    }

    private void ClosePagemaps()
    {
        lock (_lock)
        {
            foreach (var pm in _pagemaps.Values)
                pm.Dispose();
            _pagemaps.Clear();
        }
    }

    private static T Wrap<T>(Func<T> f)
    {
        try
        {
            return f();
        }
        catch (HostKernelException e)
        {
            throw ToKernel(e);
        }
    }

    internal static KernelException ToKernel(HostKernelException e) => new(e.Kind switch
    {
        HostErrorKind.NoSuchProcess or HostErrorKind.Vanished => Errno.ESRCH,
        HostErrorKind.PermissionDenied => e.Errno == (int)Errno.EACCES ? Errno.EACCES : Errno.EPERM,
        HostErrorKind.Unsupported => Errno.EOPNOTSUPP,
        _ => e.Errno != 0 ? (Errno)e.Errno : Errno.EIO,
    }, e.Message);

    public void Dispose()
    {
        _frozen?.Thaw();
        ClosePagemaps();
    }
}

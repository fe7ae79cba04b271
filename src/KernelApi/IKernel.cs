namespace CriuSharp.KernelApi;

/// <summary>
/// What a checkpoint/restore tool asks of one kernel, and nothing more: the userspace interfaces
/// CRIU uses (criu/proc_parse.c, criu/mem.c, criu/pagemap-cache.c, criu/uffd.c, criu/seize.c,
/// criu/cr-restore.c). A tool that depends only on this interface sees a kernel the way a process
/// does. Two implementations are natural: a simulated kernel, and the Linux host the tool runs on
/// (/proc/PID/*, process_vm_readv, the PAGEMAP_SCAN ioctl, ptrace, the cgroup freezer).
/// <para>
/// Conventions: a system call that can fail returns <see cref="SysResult"/> with the errno Linux
/// would return; a /proc read of a task that does not exist throws <see cref="KernelException"/>
/// (ESRCH, ENOENT). A kernel that cannot do something at all (a real host asked to create a task
/// for a restore) throws <see cref="KernelNotSupportedException"/>; <see cref="Capabilities"/>
/// says beforehand what is available.
/// </para>
/// </summary>
public interface IKernel
{
    /// <summary>Architecture, kernel version, page size and the tracking features (criu check).</summary>
    KernelCapabilities Capabilities { get; }

    /// <summary>/proc/sys/kernel/random/boot_id: identifies this kernel instance (CRIU keys its kerndat cache by it).</summary>
    string BootId { get; }

    /// <summary>/proc/uptime in nanoseconds (CRIU's dump_uptime, the PID-reuse check).</summary>
    ulong UptimeNs { get; }

    // ---- tasks -------------------------------------------------------------------------------

    /// <summary>/proc/PID/stat and status, condensed; null when no such task exists (or it has been reaped).</summary>
    TaskInfo? FindTask(int pid);

    /// <summary>
    /// The tree rooted at <paramref name="rootPid"/>, root first, each parent before its children
    /// (/proc/PID/task/TID/children walked breadth-first, as CRIU's collect_pstree does).
    /// Zombies are included; the caller decides what to do with them.
    /// </summary>
    IReadOnlyList<TaskInfo> Tree(int rootPid);

    /// <summary>
    /// /proc/PID/task: the thread ids of <paramref name="pid"/>'s thread group, the leader first,
    /// then ascending (CRIU's parse_threads). A process without threads answers its own pid.
    /// </summary>
    IReadOnlyList<int> Threads(int pid);

    // ---- /proc text ----------------------------------------------------------------------------

    string Maps(int pid);
    string Smaps(int pid);
    string Status(int pid);
    string Stat(int pid);

    /// <summary>
    /// Reads /proc/PID/pagemap (or pagemap2, as <paramref name="layout"/> says) for
    /// <c>entries.Length</c> pages from <paramref name="va"/>, one 64-bit entry per page
    /// (<see cref="PagemapBits"/>).
    /// </summary>
    void ReadPagemap(int pid, ulong va, Span<ulong> entries, PagemapLayout layout);

    /// <summary>echo VALUE &gt; /proc/PID/clear_refs ("4" clears soft-dirty bits).</summary>
    SysResult ClearRefs(int pid, string value);

    /// <summary>ioctl(pagemap_fd, PAGEMAP_SCAN, &amp;arg): returns the number of regions written to <paramref name="vec"/>.</summary>
    SysResult PagemapScan(int pid, ref PmScanArg arg, Span<PageRegion> vec);

    // ---- memory --------------------------------------------------------------------------------

    /// <summary>process_vm_readv / /proc/PID/mem read of <c>dst.Length</c> bytes (pages are faulted in for reading).</summary>
    SysResult ReadMemory(int pid, ulong va, Span<byte> dst);

    /// <summary>
    /// vmsplice of task memory into a pipe, as CRIU's parasite does for a dump: fills
    /// <paramref name="frames"/> with the host address of each page of the task from
    /// <paramref name="va"/> (one address per kernel page). Only a task of a tree frozen by
    /// <paramref name="frozen"/> can be spliced, and the addresses are read only through a
    /// <see cref="PageLease"/> of that freeze, which refuses them once the tree has been thawed.
    /// A kernel without <see cref="KernelCapabilities.CanSplice"/> returns EOPNOTSUPP.
    /// </summary>
    SysResult SplicePages(FreezeLease frozen, int pid, ulong va, Span<nint> frames);

    /// <summary>process_vm_writev / /proc/PID/mem write (FOLL_FORCE: read-only private mappings are written by COW).</summary>
    SysResult WriteMemory(int pid, ulong va, ReadOnlySpan<byte> data);

    // ---- freezer, ptrace -----------------------------------------------------------------------

    /// <summary>Freezes every task of the tree (cgroup freezer, or SIGSTOP); the lease thaws it.</summary>
    FreezeLease Freeze(int rootPid);

    /// <summary>PTRACE_GETREGSET: the task's general registers and any architecture-specific extra state.</summary>
    TaskRegisters GetRegisters(int pid);

    /// <summary>PTRACE_SETREGSET (restore): registers beyond what the task has are ignored.</summary>
    void SetRegisters(int pid, TaskRegisters registers);

    /// <summary>brk(<paramref name="newBrk"/>) in the task, as CRIU's parasite runs it; brk(0) reads the current break.</summary>
    ulong Brk(int pid, ulong newBrk);

    // ---- userfaultfd -------------------------------------------------------------------------

    /// <summary>
    /// The userfaultfd an earlier <see cref="OpenUserfaultfd"/> installed in this very task (not in
    /// an earlier task with the same pid) whose UFFDIO_API handshake succeeded, as a
    /// parasite-installed descriptor stays in the task's file table between pre-dumps; null when
    /// there is none.
    /// </summary>
    IUserfaultfd? InstalledUserfaultfd(int pid);

    /// <summary>userfaultfd(2) in the task, kept installed there (see <see cref="InstalledUserfaultfd"/>).</summary>
    SysResult OpenUserfaultfd(int pid, out IUserfaultfd? uffd);

    // ---- files ---------------------------------------------------------------------------------

    /// <summary>stat(2) of a path: its size, or null when it does not exist.</summary>
    long? FileSize(string path);

    /// <summary>
    /// open(/proc/PID/map_files/START-END) of the mapping at <paramref name="va"/>: the file or
    /// shmem object behind it, to be mapped elsewhere (<see cref="MapSource.Opened"/>).
    /// </summary>
    SysResult OpenMapFiles(int pid, ulong va, out OpenFile? file);

    /// <summary>
    /// fstat(2) of /proc/PID/map_files/START-END of the mapping at <paramref name="va"/>: what
    /// CRIU's dump_one_reg_file learns of a mapped file (st_nlink 0 = unlinked, a ghost file).
    /// </summary>
    SysResult StatMapFiles(int pid, ulong va, out FileStat stat);

    /// <summary>
    /// pread(2) at <paramref name="offset"/> of /proc/PID/map_files/START-END: the file's bytes as
    /// the page cache holds them (not the task's private copies). Returns the bytes read (0 at EOF).
    /// </summary>
    SysResult ReadMapFiles(int pid, ulong va, long offset, Span<byte> dst);

    /// <summary>
    /// open(path, O_CREAT|O_EXCL|O_WRONLY, mode) and write(2) of <paramref name="contents"/>: how
    /// CRIU's create_ghost recreates a ghost file on restore (EEXIST when the path exists).
    /// </summary>
    SysResult CreateFile(string path, uint mode, ReadOnlySpan<byte> contents);

    /// <summary>link(2): a second name for a file.</summary>
    SysResult Link(string oldPath, string newPath);

    /// <summary>unlink(2): a mapping of the file keeps it (maps shows " (deleted)" once no name is left).</summary>
    SysResult Unlink(string path);

    // ---- what restore needs (a real host may throw KernelNotSupportedException) ------------------

    /// <summary>A new task with that comm, as fork+exec leaves one, with the given pid (clone3 set_tid) and parent.</summary>
    int Spawn(string comm, int? pid = null, int ppid = 0);

    /// <summary>fork(2) of <paramref name="parentPid"/> into <paramref name="childPid"/>: memory shared copy-on-write.</summary>
    int Fork(int parentPid, int? childPid = null);

    /// <summary>
    /// clone(CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD) in
    /// <paramref name="pid"/> with set_tid <paramref name="tid"/>: a new thread sharing its
    /// address space, as CRIU's restorer creates a restored process's threads.
    /// </summary>
    int CloneThread(int pid, int? tid = null);

    /// <summary>The task exits (killed when <paramref name="signal"/> is non-zero) and its parent reaps it.</summary>
    void Exit(int pid, int exitCode, int signal = 0);

    SysResult Mmap(int pid, ulong addr, ulong len, Prot prot, MapFlags flags, MapSource source, long offset = 0);
    SysResult Munmap(int pid, ulong addr, ulong len);
    SysResult Mremap(int pid, ulong oldAddr, ulong oldLen, ulong newLen, MremapFlags flags, ulong newAddr = 0);
    SysResult Madvise(int pid, ulong addr, ulong len, Madvise advice);
    SysResult PrctlSetMm(int pid, PrctlMmField field, ulong value);

    // ---- time ----------------------------------------------------------------------------------

    /// <summary>
    /// The tool's own work takes <paramref name="ns"/> (its cost model says so): a simulated host
    /// lets that much virtual time pass, running its tasks; a real host, where time passes by
    /// itself, does nothing.
    /// </summary>
    void LetTimePass(ulong ns);
}

/// <summary>What a kernel offers; the answers <c>criu check</c> gives.</summary>
public sealed record KernelCapabilities
{
    /// <summary>x86_64, ppc64, arm64 (uname -m spelling of the family).</summary>
    public required string ArchName { get; init; }
    public required ArchFamily Arch { get; init; }
    /// <summary>CRIU's core_entry.mtype for this architecture.</summary>
    public required int CriuMtype { get; init; }
    /// <summary>The kernel version's name (uname -r, or a simulated profile's name).</summary>
    public required string KernelVersion { get; init; }
    public required int PageShift { get; init; }
    public int PageSize => 1 << PageShift;
    /// <summary>The entry layout of /proc/PID/pagemap.</summary>
    public required PagemapLayout PagemapLayout { get; init; }
    /// <summary>A 2013-series kernel with /proc/PID/pagemap2, which carries soft-dirty.</summary>
    public bool HasPagemap2 { get; init; }
    /// <summary>Soft-dirty works (clear_refs 4 and pagemap bit 55): probed, not read from the config.</summary>
    public bool MemDirtyTrack { get; init; }
    public bool UffdWp { get; init; }
    public bool UffdWpAsync { get; init; }
    public bool PagemapScan { get; init; }
    /// <summary>PAGEMAP_SCAN reports PAGE_IS_SOFT_DIRTY.</summary>
    public bool PagemapScanSoftDirty { get; init; }
    /// <summary><see cref="IKernel.SplicePages"/> works.</summary>
    public bool CanSplice { get; init; }
    /// <summary>
    /// <see cref="IKernel.SplicePages"/> copies the pages rather than referencing them (an outside
    /// observer has no vmsplice): a caller already holding the bytes should stage them with
    /// <see cref="FreezeLease.StageCopy"/> instead of splicing them again.
    /// </summary>
    public bool SpliceCopies { get; init; }
    /// <summary>
    /// <see cref="IKernel.ReadMemory"/> may be called from several threads at once while a tree is
    /// frozen (process_vm_readv on a real kernel), so a dump can read with every core.
    /// </summary>
    public bool ConcurrentReads { get; init; }
    /// <summary>Registers can be read (<see cref="IKernel.GetRegisters"/>).</summary>
    public bool CanReadRegisters { get; init; }
    /// <summary>Tasks can be created and shaped for a restore (spawn, fork, mmap, ...).</summary>
    public bool CanRestore { get; init; }
}

public enum ArchFamily { X86_64, Ppc64, Arm64 }

/// <summary>Task states as /proc/PID/stat shows them, condensed.</summary>
public enum TaskRunState { Running, Frozen, Zombie, Dead }

/// <summary>One task: identity from /proc/PID/stat and status.</summary>
public sealed record TaskInfo(int Pid, int Ppid, int Pgid, int Sid, string Comm, TaskRunState State, ulong StartTimeNs)
{
    public bool Alive => State is TaskRunState.Running or TaskRunState.Frozen;
}

/// <summary>A task's registers: the general registers in the kernel's order, and opaque extra state (FPU etc.).</summary>
public sealed record TaskRegisters(ulong[] General, byte[] Extra);

/// <summary>What backs a new mapping.</summary>
public abstract record MapSource
{
    private MapSource() { }

    /// <summary>MAP_ANONYMOUS (with MAP_SHARED: a new shmem object).</summary>
    public static readonly MapSource Anonymous = new AnonymousSource();

    /// <summary>open(path) and map it.</summary>
    public static MapSource File(string path) => new FileSource(path);

    /// <summary>
    /// open(/proc/PID/map_files/START-END) of the mapping at <paramref name="va"/> in
    /// <paramref name="pid"/> and map that object: how CRIU restores shared anonymous memory.
    /// </summary>
    public static MapSource MapFiles(int pid, ulong va) => new MapFilesSource(pid, va);

    /// <summary>A file opened earlier (<see cref="IKernel.OpenMapFiles"/>).</summary>
    public static MapSource Opened(OpenFile file) => new OpenedSource(file);

    public sealed record AnonymousSource : MapSource;
    public sealed record OpenedSource(OpenFile Handle) : MapSource;
    public sealed record FileSource(string Path) : MapSource;
    public sealed record MapFilesSource(int Pid, ulong Va) : MapSource;
}

/// <summary>
/// fstat(2) of a file, the fields CRIU's ghost_file_entry keeps. <see cref="Dev"/> is the device in
/// the kernel's internal encoding (major &lt;&lt; 20 | minor, MKKDEV in CRIU), as CRIU's images store it.
/// </summary>
public readonly record struct FileStat(ulong Inode, uint Dev, uint Mode, uint Nlink, uint Uid, uint Gid, long Size, long AtimeNs, long MtimeNs)
{
    /// <summary>S_IFMT and S_IFREG (include/uapi/linux/stat.h).</summary>
    public const uint IfMt = 0xF000, IfReg = 0x8000;

    public bool IsRegular => (Mode & IfMt) == IfReg;
}

/// <summary>An open file description of one kernel (what an fd refers to); only that kernel can map it.</summary>
public abstract class OpenFile
{
    /// <summary>fstat(2) st_ino.</summary>
    public abstract ulong Inode { get; }

    /// <summary>fstat(2) st_size.</summary>
    public abstract long Size { get; }
}

/// <summary>
/// A userfaultfd context in a task (linux/userfaultfd.h, fs/userfaultfd.c): the calls write-protect
/// tracking needs, and those a lazy-pages monitor needs to serve missing-page faults (as CRIU's
/// criu/uffd.c does): read the fault messages, fill pages with UFFDIO_COPY or UFFDIO_ZEROPAGE, wake
/// the faulting threads. The descriptor is non-blocking (O_NONBLOCK, as CRIU opens it).
/// </summary>
public interface IUserfaultfd
{
    /// <summary>
    /// UFFDIO_API: asks for <paramref name="features"/>. On success <paramref name="supported"/> is every
    /// feature the kernel has; on failure (EINVAL: wrong api, an unknown feature, a second call) the
    /// kernel zeroes the whole struct, so it is 0.
    /// </summary>
    SysResult ApiHandshake(ulong api, ulong features, out ulong supported);

    /// <summary>UFFDIO_REGISTER of [start, start+len) in <paramref name="mode"/> (<see cref="UffdConstants"/>).</summary>
    SysResult Register(ulong start, ulong len, ulong mode);

    /// <summary>UFFDIO_UNREGISTER: threads waiting on missing pages of the range are woken (they retry the fault).</summary>
    SysResult Unregister(ulong start, ulong len);

    /// <summary>
    /// read(2): as many whole <see cref="UffdMsg"/> as fit in <paramref name="buffer"/>, oldest first;
    /// a message is returned once (the thread keeps waiting until woken). Page faults come before
    /// the non-cooperative events (UFFD_EVENT_REMAP/REMOVE/UNMAP), as userfaultfd_ctx_read serves
    /// its fault queue first. EAGAIN when none is pending, EINVAL for a buffer shorter than one
    /// message or before UFFDIO_API.
    /// </summary>
    SysResult Read(Span<byte> buffer);

    /// <summary>
    /// UFFDIO_COPY of <c>src.Length</c> bytes to <paramref name="dst"/>. <paramref name="copy"/> is the
    /// uffdio_copy.copy field: bytes copied, or -errno when nothing was (0 when the kernel rejected
    /// the arguments before writing it). Returns EAGAIN when only part was copied, or when a
    /// non-cooperative event is queued and not yet read (mmap_changing: the monitor must read it
    /// first), EEXIST when the first page is already present, ENOENT when the range is not within
    /// one VMA registered with this descriptor (unmapped, or replaced by a new mapping). Wakes the threads waiting in the copied range unless
    /// <see cref="UffdConstants.CopyModeDontWake"/>.
    /// </summary>
    SysResult Copy(ulong dst, ReadOnlySpan<byte> src, ulong mode, out long copy);

    /// <summary>UFFDIO_ZEROPAGE of [start, start+len): maps the zero page; <paramref name="zeropage"/> as <c>copy</c> above.</summary>
    SysResult ZeroPage(ulong start, ulong len, ulong mode, out long zeropage);

    /// <summary>UFFDIO_WAKE: wakes the threads waiting on an address in [start, start+len) (after DONTWAKE copies).</summary>
    SysResult Wake(ulong start, ulong len);

    /// <summary>
    /// How a monitor waiting in poll(2) on this descriptor runs while a faulting thread sleeps. A
    /// simulated machine runs one thread at a time: when a thread blocks in handle_userfault, the
    /// kernel calls <paramref name="onReadable"/> (its wake_up_poll of the descriptor) before the
    /// thread retries the fault, and the monitor reads, copies and wakes from there. The monitor must
    /// not let the machine's time pass. A kernel with real threads never calls it. Null detaches.
    /// </summary>
    void SetMonitor(Action<IUserfaultfd>? onReadable);

    /// <summary>
    /// close(2) of the last descriptor (userfaultfd_release): every range is unregistered and every
    /// waiting thread woken; their retried faults are ordinary faults (anonymous memory reads zero).
    /// </summary>
    void Close();
}

/// <summary>Thrown when a kernel cannot do something at all (not an errno of one call): a real host asked to spawn a restored task.</summary>
public sealed class KernelNotSupportedException(string what) : Exception($"{what} is not supported by this kernel");

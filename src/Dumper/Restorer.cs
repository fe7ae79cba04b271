using System.Diagnostics;
using CriuSharp.Dumper.Proc;
using CriuSharp.ImageFormat;
using CriuSharp.ImageFormat.Images;

namespace CriuSharp.Dumper;

/// <summary>
/// restore (criu/cr-restore.c, criu/mem.c): rebuilds the tree in pstree order, parents first.
/// <code>
///  root:   Spawn(comm, pid) ─▶ munmap what exec mapped (vvar/vdso stay, moved if needed)
///  child:  Fork(parent, pid) when the comm matches (memory COW-shared with the parent), else Spawn
///  then:   munmap inherited VMAs that differ ─▶ mmap the image's VMAs (map_files for shmem)
///          ─▶ fill pages from the newest image holding them (PageReader follows parent/),
///             comparing inherited pages and leaving identical ones shared (pages_skipped_cow)
///          ─▶ prctl(PR_SET_MM) layout fields ─▶ registers ─▶ verify VMA checksums
/// </code>
/// </summary>
internal sealed class Restorer
{
    private readonly IKernel _k;
    private readonly RestoreOptions _o;
    private readonly int _ps;
    private readonly int _shift;
    private readonly List<DumperWarning> _warnings = [];
    /// <summary>shmid → (pid, va, pgoff) of a mapping of the restored object, for map_files.</summary>
    private readonly Dictionary<ulong, (int Pid, ulong Va, ulong PgOff)> _shm = [];
    /// <summary>shmid → inode of the restored object (to recognise an inherited mapping).</summary>
    private readonly Dictionary<ulong, ulong> _shmInode = [];
    private readonly HashSet<ulong> _shmFilled = [];
    /// <summary>reg file id → the ghost file recreated for it on the destination (its temporary name).</summary>
    private readonly Dictionary<uint, string> _ghosts = [];
    private ulong _compared, _skippedCow, _restored, _bytesRead, _zeroFilled, _fromParent, _fillBytes;
    private byte[]? _cmp;
    private bool _fillingPreloaded;
    private ulong _preloadedBytes;

    public Restorer(IKernel kernel, RestoreOptions options)
    {
        _k = kernel;
        _o = options;
        _ps = _k.Capabilities.PageSize;
        _shift = _k.Capabilities.PageShift;
    }

    public RestoreResult Run()
    {
        try
        {
            return RunRestore();
        }
        finally
        {
            // CRIU removes the ghost files' temporary names once every task has its mappings (and
            // on a failed restore): the restored mappings keep the files, unlinked, as at dump time.
            foreach (var ghost in _ghosts.Values)
                _k.Unlink(ghost);
        }
    }

    private RestoreResult RunRestore()
    {
        var wall = Stopwatch.StartNew();
        ImageSet set;
        try
        {
            set = ImageSet.Open(_o.ImagesDir);
        }
        catch (ImageFormatException e)
        {
            throw new DumperException($"cannot restore: {e.Message}", null, _o.ImagesDir, inner: e);
        }
        var inv = set.ReadInventory();
        if (inv.ImgVersion != 2)
            throw new DumperException(inv.ImgVersion == 0 && inv.HasPreDumpMode
                ? "this is a pre-dump (memory only); restore needs a full dump that names it as parent"
                : $"unsupported img_version {inv.ImgVersion}", null, _o.ImagesDir);
        var pstree = set.ReadPstree();
        var files = set.ReadFiles().Where(f => f.Reg is not null).ToDictionary(f => f.Id, f => f.Reg.Name);
        var pids = new List<int>();
        var lazyTasks = new List<LazyTask>();
        int vmasVerified = 0;
        ulong forkNs = 0, mmapNs = 0;
        CreateGhostFiles(set, files);

        foreach (var pe in pstree)
        {
            int pid = (int)pe.Pid;
            foreach (int id in pe.Threads.Select(t => (int)t).Append(pid))
                if (_k.FindTask(id) is { } existing && existing.State != TaskRunState.Dead)
                    throw new DumperException(id == pid ? "pid is already in use on the destination" : $"thread id {id} is already in use on the destination", pid, _o.ImagesDir);
            var core = set.ReadCore(pid);
            if ((int)core.Mtype != _k.Capabilities.CriuMtype)
                throw new DumperException($"images are for {core.Mtype}, the destination kernel is {_k.Capabilities.ArchName}", pid, _o.ImagesDir);
            var mm = set.ReadMm(pid);
            string comm = core.Tc?.Comm ?? "restored";
            RTask task;
            bool forked = false;
            if (pe.Ppid != 0 && _k.FindTask((int)pe.Ppid) is { Alive: true } parent && parent.Comm == comm)
            {
                task = new RTask(_k, _k.Fork(parent.Pid, pid));
                forked = true;
            }
            else
                task = new RTask(_k, _k.Spawn(comm, pid, (int)pe.Ppid));
            forkNs += _o.Cost.ForkNsPerTask;
            pids.Add(pid);

            var inherited = PrepareLayout(task, mm, files, forked);
            mmapNs += _o.Cost.MmapNsPerVma * (ulong)mm.Vmas.Count;
            var lazy = new List<(ulong Va, ulong Pages)>();
            FillPrivate(set, task, mm, inherited, lazy);
            FillShmem(set, task, mm);
            RestoreMmFields(task, mm);
            SetRegisters(pid, core);
            // The other threads, as CRIU's restorer clones them (CLONE_THREAD with set_tid) once
            // the address space is in place, each with the registers of its own core image.
            foreach (int tid in pe.Threads.Select(t => (int)t))
            {
                if (tid == pid)
                    continue;
                if (!set.Has(ImageNames.Core(tid)))
                    throw new DumperException($"pstree names thread {tid}, which has no {ImageNames.Core(tid)}", pid, _o.ImagesDir);
                var tcore = set.ReadCore(tid);
                _k.CloneThread(pid, tid);
                forkNs += _o.Cost.ForkNsPerTask;
                SetRegisters(tid, tcore);
            }
            var checks = new List<LazyVmaCheck>();
            if (_o.Verify)
                vmasVerified += Verify(set, task, mm, lazy, checks);
            if (lazy.Count > 0)
                lazyTasks.Add(RegisterLazy(task, mm, lazy) with { Checks = checks });
        }

        ulong fillNs = CostModel.Ns(_fillBytes, _o.Cost.FillBytesPerSecond) + CostModel.Ns(_bytesRead, _o.Cost.DiskBytesPerSecond);
        ulong decompressNs = CostModel.Ns(_fillBytes, _o.Cost.DecompressBytesPerSecond);
        var stats = new RestoreStats
        {
            PagesCompared = _compared,
            PagesSkippedCow = _skippedCow,
            ForkingTime = RestoreStats.Us(forkNs),
            RestoreTime = RestoreStats.Us(forkNs + mmapNs + fillNs + decompressNs),
            PagesRestored = _restored,
            BytesRead = _bytesRead,
            ZeroPagesFilled = _zeroFilled,
            PagesFromParent = _fromParent,
            DecompressTime = RestoreStats.Us(decompressNs),
            VmasVerified = vmasVerified,
            WallClock = new WallClock(TimeSpan.Zero, TimeSpan.Zero, wall.Elapsed),
        };
        StatsFile.WriteRestore(_o.ImagesDir, stats.ToProto());
        // The restored tree resumes only when the restore is complete: while its modelled time
        // passes, the tasks stay frozen, as CRIU's restored tasks wait for the final resume.
        int root = pids[0];
        using (var frozen = _k.Freeze(root))
        {
            _k.LetTimePass(forkNs + mmapNs + fillNs + decompressNs);
            // --leave-stopped: the tree is not resumed but left in a group stop, for SIGCONT.
            if (_o.LeaveStopped)
                frozen.ThawStopped();
        }
        return new RestoreResult(stats, pids, _warnings) { Lazy = lazyTasks };
    }

    /// <summary>
    /// A lazy restore's tasks found again later (the lazy-pages verb runs after restore --lazy-pages):
    /// each process of the images with PE_LAZY entries, its userfaultfd still installed, and the
    /// part of each lazy VMA's checksum its memory makes up now.
    /// </summary>
    internal List<LazyTask> Reattach(out int arrived)
    {
        arrived = 0;
        var set = ImageSet.Open(_o.ImagesDir);
        var found = new List<LazyTask>();
        foreach (var pe in set.ReadPstree())
        {
            int pid = (int)pe.Pid;
            if (!set.HasPagemap(pid))
                continue;
            var lazy = set.ReadPagemap(pid).Entries.Where(e => PagemapImage.FlagsOf(e) == PagemapFlags.Lazy)
                .Select(e => (e.Vaddr, PagemapImage.NrPages(e))).ToList();
            if (lazy.Count == 0)
                continue;
            if (_k.FindTask(pid) is not { Alive: true })
                throw new DumperException("no such restored process: restore the images with --lazy-pages first", pid, _o.ImagesDir);
            // A restore of lazy images without --lazy-pages is refused, so a restored process
            // without its userfaultfd is one whose lazy pages all arrived (the daemon closed it).
            if (_k.InstalledUserfaultfd(pid) is not { } uffd)
            {
                arrived++;
                continue;
            }
            var checks = new List<LazyVmaCheck>();
            Verify(set, new RTask(_k, pid), set.ReadMm(pid), lazy, checks, onlyLazy: true);
            found.Add(new LazyTask(pid, uffd, lazy) { Checks = checks });
        }
        if (found.Count == 0 && arrived == 0)
            throw new DumperException("the images hold no lazy pages (not a dump --lazy-pages)", null, _o.ImagesDir);
        return found;
    }

    /// <summary>
    /// The restorer's part of a lazy restore (criu/uffd.c setup_uffd, prepare_lazy_pages): a
    /// userfaultfd in the task, and every VMA holding lazy pages registered in missing mode. Pages
    /// restored from the images are already present there, so only the lazy ones will fault.
    /// </summary>
    private LazyTask RegisterLazy(RTask task, mm_entry mm, List<(ulong Va, ulong Pages)> lazy)
    {
        // The non-cooperative events criu/uffd.c asks for (NEED_UFFD_API_FEATURES less EVENT_FORK,
        // which the simulated kernel does not offer), as far as this kernel has them: without them
        // the daemon could place pages where the task has since unmapped, moved or discarded memory.
        // CRIU learns the kernel's features once (kerndat); a probe descriptor does the same here,
        // since UFFDIO_API may be called only once per descriptor.
        var r = _k.OpenUserfaultfd(task.Pid, out var uffd);
        if (!r.Ok || uffd is null)
            throw new DumperException($"lazy restore needs userfaultfd ({r.Error})", task.Pid, _o.ImagesDir, kind: DumperErrorKind.Unsupported);
        r = uffd.ApiHandshake(KernelApi.UffdConstants.Api, 0, out ulong supported);
        uffd.Close();
        if (!r.Ok)
            throw new DumperException($"lazy restore: UFFDIO_API failed ({r.Error})", task.Pid, _o.ImagesDir, kind: DumperErrorKind.Unsupported);
        r = _k.OpenUserfaultfd(task.Pid, out uffd);
        if (!r.Ok || uffd is null)
            throw new DumperException($"lazy restore needs userfaultfd ({r.Error})", task.Pid, _o.ImagesDir, kind: DumperErrorKind.Unsupported);
        r = uffd.ApiHandshake(KernelApi.UffdConstants.Api, LazyPagesDaemon.WantedFeatures & supported, out _);
        if (!r.Ok)
            throw new DumperException($"lazy restore: UFFDIO_API failed ({r.Error})", task.Pid, _o.ImagesDir, kind: DumperErrorKind.Unsupported);
        foreach (var v in mm.Vmas)
        {
            if (!lazy.Any(l => l.Va < v.End && l.Va + (l.Pages << PageGeometry.PageShift) > v.Start))
                continue;
            r = uffd.Register(v.Start, v.End - v.Start, KernelApi.UffdConstants.RegisterModeMissing);
            if (!r.Ok)
                throw new DumperException($"lazy restore: UFFDIO_REGISTER of a VMA failed ({r.Error})", task.Pid, _o.ImagesDir, v.Start, v.End);
        }
        return new LazyTask(task.Pid, uffd, lazy);
    }

    /// <summary>REMAP_GHOST: how CRIU before remap_type marked a ghost's remap_id (criu/include/files-reg.h).</summary>
    private const uint RemapGhostBit = 0x80000000;

    /// <summary>
    /// Recreates every ghost file of remap-fpath.img under CRIU's temporary name
    /// (criu/files-reg.c create_ghost: "PATH.cr.ID.ghost", O_CREAT|O_EXCL, the dumped mode).
    /// </summary>
    private void CreateGhostFiles(ImageSet set, Dictionary<uint, string> files)
    {
        foreach (var rpe in set.ReadRemapFpath())
        {
            bool ghost = rpe.HasRemapType ? rpe.RemapType == remap_type.Ghost : (rpe.RemapId & RemapGhostBit) != 0;
            uint ghostId = rpe.HasRemapType ? rpe.RemapId : rpe.RemapId & ~RemapGhostBit;
            if (!ghost)
                throw new DumperException($"remap-fpath.img has a {(rpe.HasRemapType ? rpe.RemapType : remap_type.Linked)} remap of file {rpe.OrigId}: only ghost files are supported", null, _o.ImagesDir);
            if (!files.TryGetValue(rpe.OrigId, out var path))
                throw new DumperException($"remap-fpath.img names file {rpe.OrigId}, which files.img does not have", null, _o.ImagesDir);
            if (_ghosts.ContainsKey(rpe.OrigId))
                continue;
            var (gfe, contents) = set.ReadGhostFile(ghostId);
            if ((gfe.Mode & FileStat.IfMt) != FileStat.IfReg)
                throw new DumperException($"ghost file {ImageNames.GhostFile(ghostId)} of {path} is not a regular file (mode 0{Convert.ToString(gfe.Mode, 8)})", null, _o.ImagesDir);
            string temp = $"{path}.cr.{ghostId:x}.ghost";
            var r = _k.CreateFile(temp, gfe.Mode & 0xFFF, contents);
            if (!r.Ok)
                throw new DumperException($"cannot create the ghost file {temp} on the destination ({r.Error})", null, _o.ImagesDir);
            _ghosts[rpe.OrigId] = temp;
        }
    }

    /// <summary>
    /// Maps a ghost file by its original name, as CRIU's open_path opens a remapped file: link the
    /// temporary name to the original path, map that, unlink it again, so the mapping shows
    /// "PATH (deleted)" as it did when dumped.
    /// </summary>
    private SysResult MmapGhost(RTask task, vma_entry e, string ghost, string path, Prot prot, MapFlags flags)
    {
        var l = _k.Link(ghost, path);
        if (!l.Ok)
            throw new DumperException(l.Error == Errno.EEXIST
                ? $"cannot map the unlinked file {path}: a file of that name exists on the destination"
                : $"cannot link the ghost file {ghost} to {path} ({l.Error})", task.Pid, _o.ImagesDir, e.Start, e.End);
        try
        {
            return task.Mmap(e.Start, e.End - e.Start, prot, flags, MapSource.File(path), (long)e.Pgoff);
        }
        finally
        {
            _k.Unlink(path);
        }
    }

    private void SetRegisters(int tid, core_entry core)
    {
        if (!core.HasSimTaskState)
            return;
        var (regs, extra) = SimState.DecodeTaskState(core.SimTaskState.Span);
        _k.SetRegisters(tid, new TaskRegisters(regs, extra));
    }

    private bool Same(VmaInfo cur, vma_entry e, Dictionary<uint, string> files, Dictionary<ulong, ulong> shmInode)
    {
        if (cur.Start != e.Start || cur.End != e.End || cur.Prot != e.Prot)
            return false;
        // hugetlb mappings are never inherited from the fork parent (criu/mem.c vma_can_be_shared
        // refuses them): a child's copy has no reservation, so each is mapped afresh.
        if (cur.IsHugetlb || (e.Flags & VmaMapFlags.HugeTlb) != 0)
            return false;
        var st = (VmaStatus)e.Status;
        bool shared = (e.Flags & VmaMapFlags.Shared) != 0;
        if (cur.Shared != shared)
            return false;
        if ((st & VmaStatus.AnonShared) != 0)
            return cur.IsShmem && shmInode.TryGetValue(e.Shmid, out var ino) && ino == cur.Inode && cur.PgOff == e.Pgoff;
        if ((st & (VmaStatus.FilePrivate | VmaStatus.FileShared)) != 0)
            return cur.IsFile && files.TryGetValue((uint)e.Shmid, out var path) && cur.PgOff == e.Pgoff
                && (_ghosts.ContainsKey((uint)e.Shmid) ? cur.Name == path + " (deleted)" : path == cur.Name);
        return cur.IsAnonPrivate && (st & VmaStatus.AnonPrivate) != 0;
    }

    /// <summary>Makes the task's layout the image's; returns the image VMAs kept from the fork parent.</summary>
    private HashSet<ulong> PrepareLayout(RTask task, mm_entry mm, Dictionary<uint, string> files, bool forked)
    {
        int pid = task.Pid;
        var current = SmapsParser.Parse(_k.Smaps(pid));
        var inherited = new HashSet<ulong>();
        var wanted = mm.Vmas.ToDictionary(v => v.Start);
        foreach (var cur in current)
        {
            if (cur.IsVsyscall || cur.Name == "[vvar]" || cur.IsVdso)
                continue;
            if (forked && wanted.TryGetValue(cur.Start, out var e) && Same(cur, e, files, _shmInode)
                && (e.Status & (uint)(VmaStatus.Vvar | VmaStatus.Vdso)) == 0)
            {
                inherited.Add(cur.Start);
                continue;
            }
            task.Munmap(cur.Start, cur.Length).OrThrow($"munmap 0x{cur.Start:x}");
        }
        // vvar/vdso are the kernel's; move them where the dumped task had them.
        foreach (var special in new[] { "[vvar]", "[vdso]" })
        {
            var st = special == "[vvar]" ? VmaStatus.Vvar : VmaStatus.Vdso;
            var img = mm.Vmas.FirstOrDefault(v => (v.Status & (uint)st) != 0);
            var now = current.FirstOrDefault(v => v.Name == special);
            if (img is not null && now is not null && now.Start != img.Start)
                task.Mremap(now.Start, now.Length, img.End - img.Start, MremapFlags.MayMove | MremapFlags.Fixed, img.Start).OrThrow($"mremap {special}");
        }
        foreach (var e in mm.Vmas)
        {
            var st = (VmaStatus)e.Status;
            if (inherited.Contains(e.Start) || (st & (VmaStatus.Vsyscall | VmaStatus.Vvar | VmaStatus.Vdso)) != 0)
                continue;
            ulong len = e.End - e.Start;
            var prot = (Prot)e.Prot;
            var flags = MapFlags.Fixed | ((e.Flags & VmaMapFlags.Shared) != 0 ? MapFlags.Shared : MapFlags.Private);
            if ((e.Flags & VmaMapFlags.GrowsDown) != 0) flags |= MapFlags.GrowsDown;
            if ((e.Flags & VmaMapFlags.Locked) != 0) flags |= MapFlags.Locked;
            if ((e.Flags & VmaMapFlags.NoReserve) != 0) flags |= MapFlags.NoReserve;
            // MAP_HUGETLB with the size the image names, as the restorer maps hugetlb VMAs.
            if ((e.Flags & VmaMapFlags.HugeTlb) != 0) flags |= MapFlags.HugeTlb | (MapFlags)(e.Flags & VmaMapFlags.HugetlbSizeMask);
            SysResult r;
            if ((st & VmaStatus.AnonShared) != 0)
            {
                var obj = ShmemObject(task, e);
                r = task.Mmap(e.Start, len, prot, flags, MapSource.Opened(obj), (long)e.Pgoff);
                if (r.Ok && !_shm.ContainsKey(e.Shmid))
                    _shm[e.Shmid] = (pid, e.Start, e.Pgoff);
            }
            else if ((st & (VmaStatus.FilePrivate | VmaStatus.FileShared)) != 0)
            {
                if (!files.TryGetValue((uint)e.Shmid, out var path))
                    throw new DumperException($"files.img has no file with id {e.Shmid}", pid, _o.ImagesDir, e.Start, e.End);
                if (_ghosts.TryGetValue((uint)e.Shmid, out var ghost))
                    r = MmapGhost(task, e, ghost, path, prot, flags);
                else if (_k.FileSize(path) is null)
                    throw new DumperException($"file {path} does not exist on the destination", pid, _o.ImagesDir, e.Start, e.End);
                else
                    r = task.Mmap(e.Start, len, prot, flags, MapSource.File(path), (long)e.Pgoff);
            }
            else
                r = task.Mmap(e.Start, len, prot, flags | MapFlags.Anonymous, MapSource.Anonymous);
            if (!r.Ok && r.Error == Errno.ENOMEM && (e.Flags & VmaMapFlags.HugeTlb) != 0)
                throw new DumperException($"mmap of a hugetlb mapping of {VmaMapFlags.HugetlbSize(e.Flags) >> 10} kB pages failed (ENOMEM): the destination's hugetlb pool (nr_hugepages) cannot hold it", pid, _o.ImagesDir, e.Start, e.End);
            if (!r.Ok)
                throw new DumperException($"mmap failed ({r.Error})", pid, _o.ImagesDir, e.Start, e.End);
            if (e.HasMadv)
                foreach (var (bit, adv) in new[] { (14, Madvise.HugePage), (15, Madvise.NoHugePage), (16, Madvise.DontDump), (12, Madvise.Mergeable), (1, Madvise.Random), (2, Madvise.Sequential), (10, Madvise.DontFork) })
                    if ((e.Madv & (1UL << bit)) != 0)
                        task.Madvise(e.Start, len, adv);
        }
        return inherited;
    }

    /// <summary>The shmem object behind a shmid: open it through map_files of a task that maps it, or create it.</summary>
    private OpenFile ShmemObject(RTask task, vma_entry e)
    {
        if (_shm.TryGetValue(e.Shmid, out var at) && _k.OpenMapFiles(at.Pid, at.Va, out var f).Ok && f is not null)
            return f;
        // A fresh MAP_SHARED|MAP_ANONYMOUS mapping large enough for this window creates the object;
        // for hugetlb with MAP_HUGETLB and the image's size (criu/shmem.c open_shmem without memfd).
        ulong size = e.Pgoff + (e.End - e.Start);
        var flags = MapFlags.Shared | MapFlags.Anonymous;
        if ((e.Flags & VmaMapFlags.HugeTlb) != 0)
            flags |= MapFlags.HugeTlb | (MapFlags)(e.Flags & VmaMapFlags.HugetlbSizeMask);
        var r = task.Mmap(0, size, Prot.Read | Prot.Write, flags, MapSource.Anonymous);
        if (!r.Ok)
            throw new DumperException((e.Flags & VmaMapFlags.HugeTlb) != 0 && r.Error == Errno.ENOMEM
                ? "cannot create hugetlb shared memory (ENOMEM): the destination's hugetlb pool (nr_hugepages) cannot hold it"
                : $"cannot create shared memory ({r.Error})", task.Pid, _o.ImagesDir, e.Start, e.End);
        _k.OpenMapFiles(task.Pid, (ulong)r.Value, out var obj);
        task.Munmap((ulong)r.Value, size);
        _shmInode[e.Shmid] = obj!.Inode;
        return obj;
    }

    /// <summary>One piece of a pagemap entry inside one VMA (at most <see cref="FillChunk"/> bytes).</summary>
    private readonly record struct FillItem(ulong Va, int Bytes, bool Inherited, bool InParent = false);

    private const int FillChunk = 1 << 20;
    /// <summary>Restores with at least this many bytes decompress on a second thread while the first writes.</summary>
    private const long PipelineBytes = 8L << 20;

    private void FillPrivate(ImageSet set, RTask task, mm_entry mm, HashSet<ulong> inherited, List<(ulong Va, ulong Pages)> lazy)
    {
        int pid = task.Pid;
        if (!set.HasPagemap(pid))
            return;
        using var reader = set.OpenPageReader(pid);
        var entries = reader.Pagemap.Entries;
        var vmas = mm.Vmas;
        // What to read, in pagemap order (the checks that need no page contents come first, as before).
        var items = new List<FillItem>();
        long total = 0;
        foreach (var e in entries)
        {
            var flags = PagemapImage.FlagsOf(e);
            if ((flags & (PagemapFlags.Present | PagemapFlags.Parent | PagemapFlags.Delta)) == 0)
            {
                if ((flags & PagemapFlags.Lazy) == 0 || !_o.LazyPages)
                    throw new DumperException((flags & PagemapFlags.Lazy) != 0
                        ? "the images hold lazy pages (a dump --lazy-pages): restore them with --lazy-pages and a lazy-pages daemon"
                        : "a pagemap entry is neither present, in the parent nor lazy", pid, _o.ImagesDir, e.Vaddr, e.Vaddr + (PagemapImage.NrPages(e) << 12));
                // Left missing: the lazy-pages daemon fills them through userfaultfd.
                lazy.Add((e.Vaddr, PagemapImage.NrPages(e)));
                continue;
            }
            ulong end = e.Vaddr + (PagemapImage.NrPages(e) << PageGeometry.PageShift);
            for (ulong va = e.Vaddr; va < end;)
            {
                var v = vmas.FirstOrDefault(x => x.Start <= va && va < x.End);
                if (v is null || (v.Status & (uint)(VmaStatus.AnonShared | VmaStatus.FileShared)) != 0)
                    throw new DumperException("the pagemap has pages outside any private VMA", pid, _o.ImagesDir, va, end);
                ulong stop = Math.Min(Math.Min(end, v.End), va + FillChunk);
                items.Add(new FillItem(va, (int)(stop - va), inherited.Contains(v.Start), (flags & PagemapFlags.Present) == 0));
                total += (long)(stop - va);
                va = stop;
            }
        }
        // Lazy VMAs are filled page by page with UFFDIO_COPY, which never overrides a huge page:
        // keep THPs out of them (CRIU's restorer advises MADV_NOHUGEPAGE on lazy VMAs too).
        foreach (var v in vmas)
            if (lazy.Any(l => l.Va < v.End && l.Va + (l.Pages << PageGeometry.PageShift) > v.Start))
                task.Madvise(v.Start, v.End - v.Start, Madvise.NoHugePage);
        if (total >= PipelineBytes)
            FillPipelined(pid, reader, items);
        else
        {
            var buf = GC.AllocateUninitializedArray<byte>(FillChunk);
            foreach (var it in items)
            {
                var span = buf.AsSpan(0, it.Bytes);
                ReadPages(pid, reader, it, span);
                FillPages(pid, it, span);
            }
        }
        _bytesRead += reader.Stats.BytesRead;
        _zeroFilled += reader.Stats.ZeroPagesFilled;
        _fromParent += reader.Stats.PagesFromParent;
        // Inherited anonymous VMAs: pages the parent has but this task never had must go, and so
        // must the parent's pages where this task's are lazy: the lazy-pages daemon places those
        // with UFFDIO_COPY, which only fills missing pages (EEXIST over a COW-shared one). A
        // hybrid dump makes this common — a page the parent left unchanged since the pre-dump
        // (PE_PARENT, restored eagerly) that the child wrote (PE_LAZY). CRIU's restorer likewise
        // discards the inherited pages it did not restore (restore_priv_vma_content, criu/mem.c).
        foreach (var v in vmas.Where(x => inherited.Contains(x.Start) && (x.Status & (uint)VmaStatus.AnonPrivate) != 0))
        {
            ulong a = v.Start;
            int i = reader.Pagemap.FirstEntryEndingAfter(a);
            while (a < v.End)
            {
                while (i < entries.Count && entries[i].Vaddr < v.End && (PagemapImage.FlagsOf(entries[i]) & (PagemapFlags.Present | PagemapFlags.Parent | PagemapFlags.Delta)) == 0)
                    i++;
                ulong next = i < entries.Count ? Math.Min(v.End, Math.Max(a, entries[i].Vaddr)) : v.End;
                if (next > a)
                    task.Madvise(a, next - a, Madvise.DontNeed);
                if (i >= entries.Count) break;
                a = Math.Max(a, entries[i].Vaddr + (PagemapImage.NrPages(entries[i]) << PageGeometry.PageShift));
                i++;
            }
        }
    }

    private void ReadPages(int pid, PageReader reader, FillItem it, Span<byte> span)
    {
        ulong va = it.Va;
        if (it.InParent && _o.Preloaded is { } pre && pre.TryRead(pid, va, span))
            return;
        try
        {
            reader.Read(va, span);
        }
        catch (MissingPagesException m)
        {
            throw new DumperException($"no image in the chain holds these pages ({m.Problem})", pid, _o.ImagesDir, m.Start, m.End, m);
        }
    }

    /// <summary>
    /// Puts one chunk of image pages into the task: inherited (COW-shared) pages are compared and
    /// left alone when identical; otherwise zero pages stay unpopulated and each run of non-zero
    /// pages is written with one /proc/PID/mem write.
    /// </summary>
    private void FillPages(int pid, FillItem it, ReadOnlySpan<byte> span)
    {
        // Preloaded pages are already in the pre-restored address space: no fill cost.
        _fillingPreloaded = it.InParent && _o.Preloaded is not null;
        int ps = _ps;
        if (it.Inherited)
        {
            _cmp ??= new byte[ps];
            for (int off = 0; off < span.Length; off += ps)
            {
                var page = span.Slice(off, ps);
                ulong a = it.Va + (ulong)off;
                _compared++;
                _k.ReadMemory(pid, a, _cmp);
                if (page.SequenceEqual(_cmp))
                {
                    _skippedCow++;
                    continue;
                }
                Write(pid, a, page);
            }
            return;
        }
        int run = -1;
        for (int off = 0; off < span.Length; off += ps)
        {
            bool zero = !span.Slice(off, ps).ContainsAnyExcept((byte)0); // zero already: keep it unpopulated
            if (zero && run >= 0)
            {
                Write(pid, it.Va + (ulong)run, span[run..off]);
                run = -1;
            }
            else if (!zero && run < 0)
                run = off;
        }
        if (run >= 0)
            Write(pid, it.Va + (ulong)run, span[run..]);
    }

    /// <summary>
    /// Large restores: a second thread reads and decompresses the chunks (the page reader touches
    /// only image files) into a ring of buffers while this thread, the only one that talks to the
    /// kernel, writes them into the task in order. A read that fails is reported when the writer
    /// reaches that chunk, so everything before it is written first, as in the sequential order.
    /// </summary>
    private void FillPipelined(int pid, PageReader reader, List<FillItem> items)
    {
        const int Ring = 4;
        var bufs = new byte[Ring][];
        for (int i = 0; i < Ring; i++)
            bufs[i] = GC.AllocateUninitializedArray<byte>(FillChunk);
        var filled = new SemaphoreSlim(0, Ring);
        var free = new SemaphoreSlim(Ring, Ring);
        var errors = new Exception?[items.Count];
        using var stop = new CancellationTokenSource();
        var producer = new Thread(() =>
        {
            try
            {
                for (int i = 0; i < items.Count; i++)
                {
                    free.Wait(stop.Token);
                    try
                    {
                        ReadPages(pid, reader, items[i], bufs[i % Ring].AsSpan(0, items[i].Bytes));
                    }
                    catch (Exception e)
                    {
                        errors[i] = e;
                        filled.Release();
                        return;
                    }
                    filled.Release();
                }
            }
            catch (OperationCanceledException)
            {
            }
        })
        { IsBackground = true, Name = "criu-sharp restore reader" };
        producer.Start();
        try
        {
            for (int i = 0; i < items.Count; i++)
            {
                filled.Wait();
                if (errors[i] is { } err)
                    System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(err).Throw();
                FillPages(pid, items[i], bufs[i % Ring].AsSpan(0, items[i].Bytes));
                free.Release();
            }
        }
        finally
        {
            stop.Cancel();
            producer.Join();
            filled.Dispose();
            free.Dispose();
        }
    }

    private void Write(int pid, ulong va, ReadOnlySpan<byte> data)
    {
        var r = _k.WriteMemory(pid, va, data);
        if (!r.Ok)
            throw new DumperException($"cannot write restored memory ({r.Error})", pid, _o.ImagesDir, va, va + (ulong)data.Length);
        _restored += (ulong)(data.Length / PageGeometry.PageSize);
        if (_fillingPreloaded)
            _preloadedBytes += (ulong)data.Length;
        else
            _fillBytes += (ulong)data.Length;
    }

    private void FillShmem(ImageSet set, RTask task, mm_entry mm)
    {
        foreach (var e in mm.Vmas.Where(v => (v.Status & (uint)VmaStatus.AnonShared) != 0))
        {
            if (!_shmFilled.Add(e.Shmid))
                continue;
            var name = ImageNames.ShmemPagemap(e.Shmid);
            if (!set.Has(name))
                continue;
            using var reader = set.OpenShmemPageReader(e.Shmid);
            foreach (var pe in reader.Pagemap.Entries)
            {
                ulong len = PagemapImage.NrPages(pe) << PageGeometry.PageShift;
                // Only the part of the object this mapping shows can be written through it.
                ulong s = Math.Max(pe.Vaddr, e.Pgoff), t = Math.Min(pe.Vaddr + len, e.Pgoff + (e.End - e.Start));
                if (s >= t) continue;
                var data = new byte[t - s];
                reader.Read(s, data);
                Write(task.Pid, e.Start + (s - e.Pgoff), data);
            }
            _bytesRead += reader.Stats.BytesRead;
        }
    }

    /// <summary>A task being restored, addressed by pid through the kernel's system calls.</summary>
    private readonly record struct RTask(IKernel Kernel, int Pid)
    {
        public SysResult Mmap(ulong addr, ulong len, Prot prot, MapFlags flags, MapSource source, long offset = 0) =>
            Kernel.Mmap(Pid, addr, len, prot, flags, source, offset);
        public SysResult Munmap(ulong addr, ulong len) => Kernel.Munmap(Pid, addr, len);
        public SysResult Mremap(ulong oldAddr, ulong oldLen, ulong newLen, MremapFlags flags, ulong newAddr = 0) =>
            Kernel.Mremap(Pid, oldAddr, oldLen, newLen, flags, newAddr);
        public SysResult Madvise(ulong addr, ulong len, Madvise advice) => Kernel.Madvise(Pid, addr, len, advice);
        public SysResult PrctlSetMm(PrctlMmField field, ulong value) => Kernel.PrctlSetMm(Pid, field, value);
    }

    private static void RestoreMmFields(RTask task, mm_entry mm)
    {
        task.PrctlSetMm(PrctlMmField.StartCode, mm.MmStartCode);
        task.PrctlSetMm(PrctlMmField.EndCode, mm.MmEndCode);
        task.PrctlSetMm(PrctlMmField.StartData, mm.MmStartData);
        task.PrctlSetMm(PrctlMmField.EndData, mm.MmEndData);
        task.PrctlSetMm(PrctlMmField.StartStack, mm.MmStartStack);
        task.PrctlSetMm(PrctlMmField.StartBrk, mm.MmStartBrk);
        task.PrctlSetMm(PrctlMmField.Brk, mm.MmBrk);
        task.PrctlSetMm(PrctlMmField.ArgStart, mm.MmArgStart);
        task.PrctlSetMm(PrctlMmField.ArgEnd, mm.MmArgEnd);
        task.PrctlSetMm(PrctlMmField.EnvStart, mm.MmEnvStart);
        task.PrctlSetMm(PrctlMmField.EnvEnd, mm.MmEnvEnd);
    }

    /// <summary>Recomputes each dumped VMA's hash from the restored task and compares.</summary>
    private int Verify(ImageSet set, RTask task, mm_entry mm, List<(ulong Va, ulong Pages)> lazy, List<LazyVmaCheck> lazyChecks, bool onlyLazy = false)
    {
        var sim = set.ReadSimState(task.Pid).FirstOrDefault(s => s.Key == SimState.VmaChecksumsKey);
        if (sim is null)
            return 0;
        var expected = SimState.ReadVmaChecksums(sim);
        int n = 0;
        using var walker = new PageWalker(_k, _k.Capabilities.PagemapScan, DirtySource.Always);
        var spans = new List<PageSpan>();
        var buf = GC.AllocateUninitializedArray<byte>(1 << 20);
        foreach (var e in mm.Vmas)
        {
            if (!expected.TryGetValue(e.Start, out var want))
                continue;
            // A VMA whose lazy pages have not arrived yet: only the pages present count now, the
            // lazy-pages daemon adds the digests of the pages it places.
            bool partial = lazy.Any(l => l.Va < e.End && l.Va + (l.Pages << PageGeometry.PageShift) > e.Start);
            if (onlyLazy && !partial)
                continue;
            var st = (VmaStatus)e.Status;
            var h = new VmaHash();
            var v = new VmaInfo(e.Start, e.End, e.Prot, false, e.Pgoff, 0, 0, 0,
                (st & VmaStatus.Vdso) != 0 ? "[vdso]" : (st & VmaStatus.FilePrivate) != 0 ? "/file" : null, SmapsFlags.None, 0);
            if (v.IsVdso)
                spans = [new PageSpan(e.Start, (e.End - e.Start) >> _shift, PageBits.Dirty)];
            else
            {
                spans.Clear();
                walker.Walk(task.Pid, v, spans);
            }
            foreach (var s in spans)
            {
                if (v.IsFile && (s.Bits & PageBits.File) != 0 && (s.Bits & PageBits.Swapped) == 0)
                    continue;
                for (ulong done = 0; done < s.NrPages;)
                {
                    int cnt = (int)Math.Min(s.NrPages - done, (ulong)(buf.Length / _ps));
                    ulong a = s.Va + (done << _shift);
                    var span = buf.AsSpan(0, cnt * _ps);
                    _k.ReadMemory(task.Pid, a, span);
                    h.AddPages(a, span);
                    done += (ulong)cnt;
                }
            }
            if (partial)
            {
                lazyChecks.Add(new LazyVmaCheck(e.Start, e.End, want.Hash, h.Value));
                continue;
            }
            if (h.Value != want.Hash)
                throw new DumperException("restored memory differs from the dump (VMA checksum mismatch)", task.Pid, _o.ImagesDir, e.Start, e.End,
                    // The images are inconsistent with themselves: a damaged image (exit 4), not a wrong argument.
                    new ImageFormatException(_o.ImagesDir, "image directory", null, "VMA checksum mismatch"));
            n++;
        }
        return n;
    }
}

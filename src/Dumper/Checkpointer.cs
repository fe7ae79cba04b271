using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using CriuSharp.Dumper.Proc;
using CriuSharp.ImageFormat;
using CriuSharp.ImageFormat.Images;
using Google.Protobuf;

namespace CriuSharp.Dumper;

/// <summary>
/// pre-dump and dump (criu/cr-dump.c). One run:
/// <code>
///  freeze tree ─▶ per task: parse smaps/stat ─▶ PageCollector (walk + tracker + parent) ─▶ PagePipe
///      │                                                                                     │
///      │  dump:     write while frozen (chunk mode) ─▶ core/mm/pstree/files ─▶ kill or leave │
///      └─ pre-dump: reset tracker ─▶ thaw ─▶ write pipes (PageXfer) ─▶ host.Advance(write time)
/// </code>
/// The kernel is reached only through /proc (smaps, stat, pagemap, PAGEMAP_SCAN, clear_refs,
/// memory reads), userfaultfd, freeze/thaw and what ptrace would show (registers, comm, ids).
/// </summary>
internal sealed partial class Checkpointer
{
    private const long ChunkBytes = 64L << 20;
    /// <summary>Collected-but-unwritten page bytes a dump holds while the transfer thread catches up.</summary>
    private const long StreamBudgetBytes = 32L << 20;

    private readonly IKernel _k;
    private readonly DumpOptions _o;
    private readonly bool _pre;
    private readonly CostModel _cost;
    private readonly List<DumperWarning> _warnings = [];
    private readonly int _imgPerPage;
    private readonly int _shift;

    public Checkpointer(IKernel kernel, DumpOptions options, bool preDump)
    {
        _k = kernel;
        _o = options;
        _pre = preDump;
        _cost = options.Cost;
        _shift = _k.Capabilities.PageShift;
        _imgPerPage = _k.Capabilities.PageSize / PageGeometry.PageSize;
    }

    private sealed class TaskState
    {
        public required TaskInfo Task;
        public required List<VmaInfo> Vmas;
        public PagemapImage? ParentPagemap;
        public PagePipe Pipe = null!;
        public PageXfer? Xfer;
        public ulong Scanned;
        public List<(ulong Start, ulong End, ulong Hash)> Checksums = [];
        public Dictionary<ulong, int> Shmids = [];
        /// <summary>The content tracker's digests of every page this dump's pagemap holds.</summary>
        public PageDigestMap? Digests;
    }

    public DumpResult Run()
    {
        var wall = Stopwatch.StartNew();
        var tracker = Criu.ResolveTracker(_k, _o.Tracker, _warnings, _o.AutoFallback, _o.StrictTracker);
        bool track = _pre || _o.TrackMem;
        var root = _k.FindTask(_o.Pid);
        if (root is null || !root.Alive)
            throw new DumperException("no such process to dump", _o.Pid);

        var (parentSet, parentUptimeUs) = OpenParent();
        PrepareImagesDir(_o.ImagesDir, parentSet);
        using var dir = ImageDirectory.Create(_o.ImagesDir);
        if (_o.PrevImagesDir is not null)
            dir.LinkParent(_o.PrevImagesDir);
        using var pageServer = ConnectPageServer();

        // ---- freeze ---------------------------------------------------------------------------
        var freezeWatch = Stopwatch.StartNew();
        var frozen = _k.Freeze(_o.Pid);
        var freezeWall = freezeWatch.Elapsed;
        var tasks = new List<TaskState>();
        ulong freezeNs = 0, memdumpNs = 0, memwriteNs = 0;
        ulong compressNs = 0;
        // Read mode: the page copy done after the thaw (memdump time, not frozen time).
        ulong readNs = 0;
        var collectWatch = Stopwatch.StartNew();
        TimeSpan writeWall = TimeSpan.Zero;
        var pageStats = new PageWriteStats();
        ulong shScanned = 0, shWritten = 0;
        // A dump writes while frozen: pages stream to the images as they are collected.
        using var stream = _pre ? null : new PageXferQueue(StreamBudgetBytes);
        // Elision and deltas (pre-dumps only): the history must describe this dump's parent.
        var history = _pre ? _o.History : null;
        history?.Begin(parentSet?.Path, _o.ImagesDir);
        var deltaCounters = new DeltaCounters();
        ulong estimatedBytes = 0;
        try
        {
            foreach (var t in _k.Tree(_o.Pid))
            {
                if (!t.Alive)
                {
                    _warnings.Add(new DumperWarning("zombie", $"task {t.Pid} is a zombie and is not dumped"));
                    continue;
                }
                // smaps carries VmFlags; [vsyscall] (gate area) only shows in maps, and CRIU keeps it in mm.
                var vmas = SmapsParser.Parse(_k.Smaps(t.Pid));
                // (Linux's smaps lists it too since 4.x; then it is there once.)
                if (!vmas.Any(v => v.IsVsyscall))
                    vmas.AddRange(SmapsParser.ParseMaps(_k.Maps(t.Pid)).Where(v => v.IsVsyscall));
                tasks.Add(new TaskState { Task = t, Vmas = vmas });
            }
            freezeNs = _cost.FreezeNsPerTask * (ulong)tasks.Count;
            CheckTimeout(freezeNs, freezeWall);
            bool readMode = _pre && _o.PreDumpMode == PreDumpMode.Read;
            bool parentRead = ParentWasReadMode(parentSet);
            ulong uptimeUs = _k.UptimeNs / 1000;

            bool useScan = tracker is TrackerKind.PagemapScan or TrackerKind.UffdWp
                           || (tracker is TrackerKind.None or TrackerKind.Content && _k.Capabilities.PagemapScan);
            var dirty = tracker switch
            {
                TrackerKind.SoftDirty or TrackerKind.PagemapScan => DirtySource.SoftDirty,
                TrackerKind.UffdWp => DirtySource.Written,
                _ => DirtySource.Always,
            };
            using var walker = new PageWalker(_k, useScan, dirty);
            var spans = new List<PageSpan>(256);
            var serverParents = AskPageServerParents(pageServer, parentSet, tasks);
            foreach (var ts in tasks)
            {
                var t = ts.Task;
                bool parentOk = parentSet is not null && tracker != TrackerKind.None
                    && (serverParents?.Contains(t.Pid) ?? parentSet.HasPagemap(t.Pid));
                // With a page server the parent's pagemaps are on the server, which answered for them.
                if (serverParents is null && parentSet is not null && tracker != TrackerKind.None && !parentOk)
                {
                    // Images of other processes (a --prev-images-dir naming the wrong dump) cannot
                    // serve as this task's parent: say so rather than silently dumping everything.
                    var held = parentSet.PagemapPids();
                    _warnings.Add(new DumperWarning("parent-ignored", held.Count == 0
                        ? $"task {t.Pid}: the parent images in {parentSet.Path} hold no process's pages, so they are ignored and every page is dumped"
                        : $"task {t.Pid}: the parent images in {parentSet.Path} hold no pages of it (they are of pid {string.Join(", ", held)}), so they are ignored and every page of it is dumped"));
                }
                if (parentOk && parentUptimeUs is ulong pu && t.StartTimeNs / 1000 > pu)
                {
                    parentOk = false;
                    _warnings.Add(new DumperWarning("pid-reuse", $"task {t.Pid} started after the parent dump: its parent images are ignored (PID reuse)"));
                }
                if (parentOk && tracker == TrackerKind.UffdWp && _k.InstalledUserfaultfd(t.Pid) is null)
                    parentOk = false; // no write-protect history for this task: everything counts as written
                if (parentOk)
                    ts.ParentPagemap = serverParents is null ? parentSet!.ReadPagemap(t.Pid) : PagemapImage.AllInParent("parent on the page server");
                PageDigestMap? parentDigests = parentOk && tracker == TrackerKind.Content ? parentSet!.ReadPageDigests(t.Pid) : null;
                if (!_pre)
                {
                    ts.Xfer = new PageXfer(OpenSink(dir, pageServer, t.Pid), digests: _o.RecordChecksums);
                    ts.Pipe = new PagePipe(stream!, ts.Xfer, frozen);
                }
                else
                    ts.Pipe = new PagePipe();
                var collector = new PageCollector(_k, frozen, t.Pid, walker, ts.Pipe, ts.ParentPagemap, _pre, _o.RecordChecksums && !_pre, _imgPerPage)
                {
                    ReadMode = readMode,
                    ParentSkippedUnreadable = parentRead,
                };
                if (tracker == TrackerKind.Content)
                    collector.TrackContent(parentDigests);
                foreach (var v in ts.Vmas)
                {
                    collector.CollectVma(v, spans);
                    if (!_pre && ts.Pipe.BufferedBytes >= ChunkBytes)
                        ts.Pipe.Drain();
                }
                if (!_pre)
                    ts.Pipe.Drain();
                ts.Scanned = collector.Scanned;
                ts.Checksums = collector.Checksums;
                ts.Digests = collector.Digests;
                memdumpNs += (ulong)(collector.Scanned * _cost.ScanNsPerPage) + CostModel.Ns(collector.CollectedBytes - collector.DeferredBytes, _cost.CopyBytesPerSecond);
            }
            memdumpNs += _cost.ProcParseNsPerTask * (ulong)tasks.Count;
            var collectWall = collectWatch.Elapsed - writeWall;

            // ---- reset the tracker (pages were collected), still frozen ------------------------
            ulong resetPages = 0;
            if (track)
                foreach (var ts in tasks)
                    resetPages += ResetTracker(tracker, ts);
            memdumpNs += (ulong)(resetPages * _cost.ResetNsPerPage);

            var writeWatch = Stopwatch.StartNew();
            if (_pre)
            {
                // frozen_time stops before the pages are written (cr_pre_dump_finish).
                _k.LetTimePass(freezeNs + memdumpNs);
                frozen.Thaw();
                foreach (var ts in tasks)
                {
                    if (readMode)
                        readNs += ReadDeferred(ts.Task.Pid, ts.Pipe);
                    using var xfer = new PageXfer(OpenSink(dir, pageServer, ts.Task.Pid));
                    using var sieve = history is null ? null : new PageSieve(history, ts.Task.Pid, ts.ParentPagemap, _o.PageStore);
                    xfer.Write(ts.Pipe, sieve);
                    if (sieve is not null)
                    {
                        deltaCounters = deltaCounters.Add(sieve.Counters);
                        estimatedBytes += sieve.EstimatedBytes;
                    }
                    if (ts.Digests is not null)
                        dir.WritePageDigests(ts.Task.Pid, ts.Digests);
                    var st = xfer.Finish();
                    pageStats.Add(st);
                    if (_o.AutoDedup) PageXfer.Dedup(parentSet, ImageNames.Pagemap(ts.Task.Pid), xfer.WrittenRanges);
                }
                dir.WriteInventory(new inventory_entry { ImgVersion = 0, DumpUptime = uptimeUs, PreDumpMode = (uint)_o.PreDumpMode });
                memdumpNs += readNs;
            }
            else
            {
                stream!.Flush();
                foreach (var ts in tasks)
                {
                    pageStats.Add(ts.Xfer!.Finish());
                    if (ts.Digests is not null)
                        dir.WritePageDigests(ts.Task.Pid, ts.Digests);
                    AddDigests(ts.Checksums, ts.Xfer.Digests);
                    if (_o.AutoDedup) PageXfer.Dedup(parentSet, ImageNames.Pagemap(ts.Task.Pid), ts.Xfer.WrittenRanges);
                    ts.Xfer.Dispose();
                    ts.Xfer = null;
                }
                (shScanned, shWritten) = DumpShmem(dir, pageServer, tasks, pageStats);
                WriteTaskImages(dir, tasks, track ? uptimeUs : null);
            }
            writeWall += writeWatch.Elapsed;

            ulong stored = pageStats.BytesStored, raw = pageStats.BytesRaw;
            // Pages considered for deltas were also compressed alone to size them up.
            compressNs = _o.PageStore.Compression == PageCompression.None ? 0
                : CostModel.Ns(raw + estimatedBytes, _o.PageStore.Compression == PageCompression.Zstd ? _cost.CompressBytesPerSecond / 3 : _cost.CompressBytesPerSecond)
                  / (ulong)Math.Max(1, _o.PageStore.Parallelism);
            memwriteNs = compressNs + CostModel.Ns(stored + pageStats.BytesDelta, _cost.DiskBytesPerSecond);

            ulong frozenNs = freezeNs + memdumpNs - readNs + (_pre ? 0 : memwriteNs);
            var stats = new DumpStats
            {
                FreezingTime = RestoreStats.Us(freezeNs),
                FrozenTime = RestoreStats.Us(frozenNs),
                MemdumpTime = RestoreStats.Us(memdumpNs),
                MemwriteTime = RestoreStats.Us(memwriteNs),
                PagesScanned = tasks.Aggregate(0UL, (s, x) => s + x.Scanned) * (ulong)_imgPerPage,
                PagesSkippedParent = pageStats.PagesSkippedParent,
                PagesWritten = pageStats.PagesWritten + pageStats.PagesDelta - shWritten,
                PagesLazy = pageStats.PagesLazy,
                PagePipes = (ulong)tasks.Count,
                PagePipeBufs = (ulong)tasks.Sum(x => x.Pipe.BufferCount),
                ShpagesScanned = shScanned,
                ShpagesSkippedParent = 0,
                ShpagesWritten = shWritten,
                BytesRaw = raw + (pageStats.PagesDelta << PageGeometry.PageShift),
                BytesCompressed = stored,
                ZeroPagesSkipped = pageStats.ZeroPagesSkipped,
                PagesStoredRaw = pageStats.PagesStoredRaw,
                Tracker = TrackerNames.Name(tracker),
                Compression = _o.PageStore.Compression switch { PageCompression.Lz4 => "lz4", PageCompression.Zstd => "zstd", _ => "none" },
                CompressTime = RestoreStats.Us(compressNs),
                Delta = history is null ? null : deltaCounters,
                WallClock = new WallClock(collectWall, writeWall, wall.Elapsed),
            };
            // The server has every page once it answers CLOSE; only then is the dump complete.
            pageServer?.Close();
            dir.WriteDumpStats(stats.ToProto());
            dir.Commit();
            history?.Commit(_o.ImagesDir, deltaCounters);

            if (_pre)
                _k.LetTimePass(readNs + memwriteNs);
            else if (_o.LeaveStopped)
            {
                // criu/cr-dump.c: with --leave-stopped the tree is switched to TASK_STOPPED, not killed.
                _k.LetTimePass(frozenNs);
                frozen.ThawStopped();
            }
            else if (_o.LeaveRunning)
            {
                _k.LetTimePass(frozenNs);
                frozen.Thaw();
            }
            else
            {
                _k.LetTimePass(frozenNs);
                KillTree(tasks);
                frozen.Thaw(); // nothing is left to thaw; the lease ends
            }
            return new DumpResult(stats with { WallClock = new WallClock(collectWall, writeWall, wall.Elapsed) },
                tasks.Select(x => x.Task.Pid).ToList(), tracker, _warnings);
        }
        finally
        {
            // A dump that failed part-way: the transfer thread and the page stores' workers may
            // still be reading the frozen tasks' frames, so they are stopped (in that order: the
            // transfer thread feeds the workers) before the tree runs again.
            stream?.Dispose();
            foreach (var ts in tasks)
                ts.Xfer?.Dispose();
            frozen.Thaw();
        }
    }

    private (ImageSet? Set, ulong? UptimeUs) OpenParent()
    {
        if (_o.PrevImagesDir is null)
            return (null, null);
        string path = Path.GetFullPath(Path.IsPathRooted(_o.PrevImagesDir) ? _o.PrevImagesDir : Path.Combine(_o.ImagesDir, _o.PrevImagesDir));
        if (!Directory.Exists(path))
            throw new DumperException($"parent images directory '{_o.PrevImagesDir}' does not exist (--prev-images-dir is relative to the images directory)", _o.Pid, _o.ImagesDir);
        if (Path.GetFullPath(path).TrimEnd('/') == Path.GetFullPath(_o.ImagesDir).TrimEnd('/'))
            throw new DumperException("the parent images directory is the images directory itself", _o.Pid, _o.ImagesDir);
        try
        {
            var set = ImageSet.Open(path);
            var inv = set.ReadInventory();
            return (set, inv.HasDumpUptime ? inv.DumpUptime : null);
        }
        catch (ImageFormatException e)
        {
            throw new DumperException($"parent images cannot be used: {e.Message}", _o.Pid, _o.ImagesDir, inner: e);
        }
    }

    /// <summary>
    /// CRIU writes into an existing -D directory, replacing the images it finds. We do the same for
    /// an earlier complete or interrupted image set (its CRIU image files, stats and parent link
    /// are removed first, so no stale pagemap of a vanished task survives) and refuse a directory
    /// holding anything else.
    /// </summary>
    internal static void PrepareImagesDir(string dir, ImageSet? parent, bool checkOnly = false)
    {
        if (!Directory.Exists(dir))
            return;
        var entries = Directory.EnumerateFileSystemEntries(dir).ToList();
        if (entries.Count == 0)
            return;
        // CRIU's logs (-o dump.log) live in the images directory too; they are neither foreign nor replaced.
        entries.RemoveAll(e => Path.GetFileName(e).EndsWith(".log", StringComparison.Ordinal));
        var foreign = entries.Select(Path.GetFileName).Where(n => !ImageNames.BelongsToImageDirectory(n!)).ToList();
        if (foreign.Count > 0)
            throw new DumperException($"images directory holds files that are not images ({string.Join(", ", foreign.Take(3))}); use an empty directory", null, dir);
        if (checkOnly)
            return;
        foreach (var e in entries)
        {
            var fi = new FileInfo(e);
            if (fi.LinkTarget is not null || File.Exists(e))
                File.Delete(e);
        }
    }

    private ulong ResetTracker(TrackerKind tracker, TaskState ts)
    {
        var t = ts.Task;
        ulong pages = ts.Vmas.Aggregate(0UL, (s, v) => s + (v.Length >> _shift));
        switch (tracker)
        {
            case TrackerKind.SoftDirty:
            case TrackerKind.PagemapScan:
                var r = _k.ClearRefs(t.Pid, "4");
                if (!r.Ok)
                    _warnings.Add(new DumperWarning("no-soft-dirty", $"clear_refs 4 failed for task {t.Pid} ({r.Error}): the kernel has no soft-dirty tracking"));
                return pages;
            case TrackerKind.UffdWp:
                ArmUffd(ts);
                return pages;
            case TrackerKind.Content:
                return 0; // the digests written with the images are the tracking state
            default:
                return 0;
        }
    }

    /// <summary>
    /// Registers every VMA not yet registered (new VMAs are noticed here) for async write-protect
    /// with WP_UNPOPULATED, then arms what was written since the last dump with PAGEMAP_SCAN
    /// WP_MATCHING|CHECK_WPASYNC, so the next dump sees only new writes as WRITTEN.
    /// </summary>
    private void ArmUffd(TaskState ts)
    {
        var t = ts.Task;
        var uffd = _k.InstalledUserfaultfd(t.Pid);
        if (uffd is null)
        {
            var r = _k.OpenUserfaultfd(t.Pid, out var ctx);
            if (!r.Ok || ctx is null)
            {
                _warnings.Add(new DumperWarning("no-uffd", $"userfaultfd unavailable for task {t.Pid} ({r.Error})"));
                return;
            }
            ulong want = UffdConstants.FeatureWpAsync | UffdConstants.FeatureWpUnpopulated | UffdConstants.FeaturePagefaultFlagWp;
            var h = ctx.ApiHandshake(UffdConstants.Api, want, out ulong supported);
            if (!h.Ok)
            {
                _warnings.Add(new DumperWarning("no-uffd-wp", $"userfaultfd lacks async write-protect (features 0x{supported:x})"));
                return;
            }
            uffd = ctx;
        }
        foreach (var v in ts.Vmas)
        {
            if (v.IsVvar || v.IsVsyscall || v.IsVdso || v.IsHugetlb || v.IsFile && v.Shared)
                continue;
            if ((v.VmFlags & SmapsFlags.UffdWp) == 0)
                uffd.Register(v.Start, v.Length, UffdConstants.RegisterModeWp);
            var arg = PmScanArg.Create(v.Start, v.End, 0, PageCategory.Written, PageCategory.Written,
                flags: PageCategory.ScanWpMatching | PageCategory.ScanCheckWpAsync);
            _k.PagemapScan(t.Pid, ref arg, []);
        }
    }

    private void KillTree(List<TaskState> tasks)
    {
        for (int i = tasks.Count - 1; i >= 0; i--)
        {
            var t = tasks[i].Task;
            _k.Exit(t.Pid, 0, Signals.SIGKILL);
        }
    }

    // ---- shared anonymous memory: once per object -----------------------------------------------

    /// <summary>
    /// Completes each VMA checksum (so far the digests of its PE_PARENT pages, taken by the
    /// collector) with the digests the page store took of the pages it wrote. Both lists ascend.
    /// </summary>
    private static void AddDigests(List<(ulong Start, ulong End, ulong Hash)> checksums, IReadOnlyList<(ulong Va, ulong Digest)> digests)
    {
        int d = 0;
        for (int i = 0; i < checksums.Count && d < digests.Count; i++)
        {
            var (start, end, hash) = checksums[i];
            while (d < digests.Count && digests[d].Va < start)
                d++;
            for (; d < digests.Count && digests[d].Va < end; d++)
                hash += digests[d].Digest;
            checksums[i] = (start, end, hash);
        }
    }

    private (ulong Scanned, ulong Written) DumpShmem(ImageDirectory dir, PageServer.PageServerClient? pageServer, List<TaskState> tasks, PageWriteStats total)
    {
        // shmid = inode of the shmem object (CRIU keys shared anonymous memory by it).
        var objects = new SortedDictionary<ulong, List<(int Pid, VmaInfo Vma)>>();
        foreach (var ts in tasks)
            foreach (var v in ts.Vmas)
                if (v.IsShmem)
                {
                    if (!objects.TryGetValue(v.Inode, out var l)) objects[v.Inode] = l = [];
                    l.Add((ts.Task.Pid, v));
                }
        ulong scanned = 0, written = 0;
        using var walker = new PageWalker(_k, _k.Capabilities.PagemapScan, DirtySource.Always);
        var spans = new List<PageSpan>();
        var buf = new byte[_k.Capabilities.PageSize];
        foreach (var (shmid, maps) in objects)
        {
            // Offsets inside the object -> content, from whichever mapping shows the page first.
            var pages = new SortedDictionary<ulong, byte[]>();
            foreach (var (pid, v) in maps)
            {
                scanned += (v.Length >> _shift) * (ulong)_imgPerPage;
                spans.Clear();
                walker.Walk(pid, v, spans);
                foreach (var s in spans)
                    for (ulong i = 0; i < s.NrPages; i++)
                    {
                        ulong va = s.Va + (i << _shift);
                        ulong off = v.PgOff + (va - v.Start);
                        if (pages.ContainsKey(off)) continue;
                        var r = _k.ReadMemory(pid, va, buf);
                        if (!r.Ok) throw new DumperException($"cannot read shared memory ({r.Error})", pid, null, va, va + (ulong)buf.Length);
                        pages[off] = (byte[])buf.Clone();
                    }
            }
            using var w = OpenShmemSink(dir, pageServer, shmid);
            var run = new List<byte>();
            ulong runStart = 0, next = ulong.MaxValue;
            foreach (var (off, data) in pages)
            {
                if (off != next && run.Count > 0)
                {
                    w.AddPresent(runStart, run.ToArray());
                    run.Clear();
                }
                if (run.Count == 0) runStart = off;
                run.AddRange(data);
                next = off + (ulong)data.Length;
            }
            if (run.Count > 0) w.AddPresent(runStart, run.ToArray());
            var st = w.Finish();
            written += st.PagesWritten;
            total.Add(st);
        }
        return (scanned, written);
    }

    // ---- pstree, core, mm, files, inventory -------------------------------------------------------

    private void WriteTaskImages(ImageDirectory dir, List<TaskState> tasks, ulong? uptimeUs)
    {
        var files = new Dictionary<string, uint>();
        uint FileId(string path)
        {
            if (!files.TryGetValue(path, out var id))
                files[path] = id = (uint)files.Count + 1;
            return id;
        }
        var pstree = new List<pstree_entry>();
        var pids = tasks.Select(x => x.Task.Pid).ToHashSet();
        foreach (var ts in tasks)
        {
            var t = ts.Task;
            int ppid = pids.Contains(t.Ppid) && t.Pid != _o.Pid ? t.Ppid : 0;
            pstree.Add(new pstree_entry { Pid = (uint)t.Pid, Ppid = (uint)ppid, Pgid = (uint)t.Pgid, Sid = (uint)t.Sid, Threads = { (uint)t.Pid } });
            dir.WriteCore(t.Pid, BuildCore(t));
            dir.WriteIds(t.Pid, new task_kobj_ids_entry { VmId = (uint)t.Pid, FilesId = (uint)t.Pid, FsId = (uint)t.Pid, SighandId = (uint)t.Pid });

            var stat = _k.Stat(t.Pid).TrimEnd('\n');
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' '); // fields from 3 (state) on
            ulong F(int n) => ulong.Parse(fields[n - 3], CultureInfo.InvariantCulture);
            var mm = new mm_entry
            {
                MmStartCode = F(26), MmEndCode = F(27), MmStartStack = F(28),
                MmStartData = F(45), MmEndData = F(46), MmStartBrk = F(47),
                MmBrk = _k.Brk(t.Pid, 0), // the parasite's brk(0)
                MmArgStart = F(48), MmArgEnd = F(49), MmEnvStart = F(50), MmEnvEnd = F(51),
            };
            var exe = ts.Vmas.FirstOrDefault(v => v.IsFile && v.Start <= mm.MmStartCode && mm.MmStartCode < v.End);
            mm.ExeFileId = exe is null ? 0 : FileId(exe.Name!);
            foreach (var v in ts.Vmas)
            {
                ulong shmid = v.IsShmem ? v.Inode : v.IsFile ? FileId(v.Name!) : 0;
                var e = new vma_entry
                {
                    Start = v.Start, End = v.End, Pgoff = v.IsFile || v.IsShmem ? v.PgOff : 0, Shmid = shmid,
                    Prot = v.Prot, Flags = v.MapFlags, Status = (uint)v.Status, Fd = -1,
                };
                if (v.Madv != 0) e.Madv = v.Madv;
                if (v.IsFile) e.Fdflags = v.Shared && (v.Prot & VmaInfo.ProtWrite) != 0 ? 2u : 0u;
                mm.Vmas.Add(e);
            }
            dir.WriteMm(t.Pid, mm);
            var sim = new List<sim_state_entry>();
            if (ts.Checksums.Count > 0)
                sim.Add(SimState.VmaChecksums(ts.Checksums));
            sim.Add(SimState.PageSize(_k.Capabilities.PageSize));
            // A kernel that cannot restore into itself is the real host: its images name the
            // host's files, which a restore into a simulated machine imports.
            if (!_k.Capabilities.CanRestore)
                sim.Add(SimState.RealHostOrigin());
            dir.WriteSimState(t.Pid, sim);
        }
        dir.WriteFiles(files.OrderBy(f => f.Value).Select(f =>
        {
            var reg = new reg_file_entry { Id = f.Value, Flags = 0, Pos = 0, Name = f.Key, Fown = new fown_entry() };
            if (_k.FileSize(f.Key) is long size) reg.Size = (ulong)size;
            return new file_entry { Type = fd_types.Reg, Id = f.Value, Reg = reg };
        }));
        dir.WritePstree(pstree);
        var inv = new inventory_entry
        {
            ImgVersion = 2, FdinfoPerId = true, NsPerId = true, Lsmtype = lsmtype.NoLsm,
            RootIds = new task_kobj_ids_entry { VmId = (uint)_o.Pid, FilesId = (uint)_o.Pid, FsId = (uint)_o.Pid, SighandId = (uint)_o.Pid },
        };
        if (uptimeUs is ulong u) inv.DumpUptime = u;
        dir.WriteInventory(inv);
    }

    private core_entry BuildCore(TaskInfo t)
    {
        TaskRegisters? regs = null;
        if (_k.Capabilities.CanReadRegisters)
        {
            try
            {
                regs = _k.GetRegisters(t.Pid);
            }
            catch (KernelException e)
            {
                // CRIU cannot dump without registers; a memory checkpoint of a process we may not
                // ptrace still can, so the core says so by leaving thread_info out.
                _warnings.Add(new DumperWarning("registers-omitted", $"registers of task {t.Pid} omitted: {e.Message}"));
            }
        }
        else
            _warnings.Add(new DumperWarning("registers-omitted", $"registers of task {t.Pid} omitted: the kernel does not offer them"));
        var core = new core_entry
        {
            Mtype = (core_entry.Types.march)_k.Capabilities.CriuMtype,
            Tc = new task_core_entry { TaskState = 1, ExitCode = 0, Personality = 0, Flags = 0, BlkSigset = 0, Comm = t.Comm },
            ThreadCore = new thread_core_entry { FutexRla = 0, FutexRlaLen = 0 },
        };
        if (regs is not null)
            core.SimTaskState = ByteString.CopyFrom(SimState.EncodeTaskState(regs.General, regs.Extra));
        if (regs is not null && _k.Capabilities.Arch == ArchFamily.X86_64)
        {
            var r = regs.General;
            var gp = new user_x86_regs_entry
            {
                Ip = r[0], Sp = r[1], Ax = r[2], Bx = r[3], Cx = r[4], Dx = r[5], Si = r[6], Di = r[7], Bp = r[8],
                R8 = r[9], R9 = r[10], R10 = r[11], R11 = r[12], R12 = r[13], R13 = r[14], R14 = r[15], R15 = r[16],
                Cs = 0x33, Ss = 0x2b, Flags = 0x246,
            };
            var fp = new user_x86_fpregs_entry { Cwd = 0x37f, Mxcsr = 0x1f80, MxcsrMask = 0xffff };
            for (int i = 0; i < 32; i++) fp.StSpace.Add(0);
            for (int i = 0; i < 64; i++) fp.XmmSpace.Add(0);
            core.ThreadInfo = new thread_info_x86 { ClearTidAddr = 0, Gpregs = gp, Fpregs = fp };
        }
        return core;
    }
}

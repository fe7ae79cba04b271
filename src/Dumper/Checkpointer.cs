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

    /// <summary>What one dump knows about one task of the tree, from its VMAs to its written digests.</summary>
    private sealed class TaskState
    {
        public required TaskInfo Task;
        public required List<VmaInfo> Vmas;
        /// <summary>/proc/PID/task at freeze time: the leader, then the other threads (pstree's threads list).</summary>
        public required IReadOnlyList<int> Threads;
        public PagemapImage? ParentPagemap;
        public PagePipe Pipe = null!;
        public PageXfer? Xfer;
        public ulong Scanned;
        public List<(ulong Start, ulong End, ulong Hash)> Checksums = [];
        /// <summary>The content tracker's digests of every page this dump's pagemap holds.</summary>
        public PageDigestMap? Digests;
        /// <summary>A dump with a history: elision and deltas of the written pages, chunk by chunk.</summary>
        public PageSieve? Sieve;
        /// <summary>A history rebuilt from images: this task's parent chain (digests, delta bases).</summary>
        public SentPages.ChainSource? Chain;
        /// <summary><see cref="Digests"/> holds placeholders for pages the page store fetched and digested.</summary>
        public bool DigestsPending;
    }

    /// <summary>
    /// One run of pre-dump or dump: what the steps of <see cref="Run"/> hand each other. Every step
    /// reads and extends it; nothing of a run lives in the checkpointer's fields.
    /// </summary>
    private sealed class DumpRun : IDisposable
    {
        public required TrackerKind Tracker;
        /// <summary>Whether this run leaves the tracker armed for a next pre-dump (always for a pre-dump).</summary>
        public required bool Track;
        public required ImageSet? ParentSet;
        public required ulong? ParentUptimeUs;
        public required ImageDirectory Dir;
        public required PageServer.PageServerClient? PageServer;
        /// <summary>A dump writes while frozen: pages stream to the images as they are collected.</summary>
        public required PageXferQueue? Stream;
        /// <summary>Elision and deltas: the history describing this dump's parent (a dump's only with local images, see <see cref="SievesFinalDump"/>).</summary>
        public required SentPages? History;
        /// <summary>What deltas cost and save per byte (see <see cref="DeltaRates"/>).</summary>
        public required DeltaCostRates Rates;
        public readonly Stopwatch Wall = Stopwatch.StartNew();
        public PhaseTrace Trace = null!;
        /// <summary>The root task's parent pagemap and digests, read while the tree is being frozen (see <see cref="PrefetchParent"/>).</summary>
        public Task<(PagemapImage Pagemap, PageDigestMap? Digests)>? ParentPrefetch;
        public FreezeLease? Frozen;
        public readonly List<TaskState> Tasks = [];
        public ulong UptimeUs;

        // Virtual time the cost model charges, per CRIU's dump stats.
        public ulong FreezeNs, MemdumpNs, MemwriteNs, CompressNs;
        /// <summary>--pre-dump-mode read: the page copy after the thaw, in memdump time but not frozen time.</summary>
        public ulong ReadNs;
        // Host time, for the wall-clock stats.
        public TimeSpan CollectWall, WriteWall;

        public readonly PageWriteStats PageStats = new();
        public ulong ShScanned, ShWritten;
        public DeltaCounters DeltaCounters = new();
        /// <summary>Bytes of pages the sieve encoded as deltas (attempts included) or read to pre-check them.</summary>
        public ulong EncodedBytes;
        /// <summary>A history rebuilt from images: bytes of delta bases read from the parent chain.</summary>
        public ulong BaseBytes;

        public ulong FrozenNs(bool preDump) => FreezeNs + MemdumpNs - ReadNs + (preDump ? 0 : MemwriteNs);

        /// <summary>
        /// A run that ends, failed or not: the transfer thread and the page stores' workers may
        /// still be reading the frozen tasks' frames, so they stop (in that order: the transfer
        /// thread feeds the workers) before the tree runs again.
        /// </summary>
        public void Dispose()
        {
            Stream?.Dispose();
            foreach (var ts in Tasks)
            {
                ts.Xfer?.Dispose();
                ts.Chain?.Dispose();
            }
            Frozen?.Thaw();
            PageServer?.Dispose();
            // A prefetch of the parent images not used (the freeze failed, the parent was
            // rejected) still finishes before the run is gone; what it failed with was never asked for.
            try
            {
                ParentPrefetch?.Wait();
            }
            catch (AggregateException)
            {
            }
            Dir.Dispose();
        }
    }

    /// <summary>
    /// The steps of criu/cr-dump.c in order: freeze the tree and read each task's VMAs, collect the
    /// pagemaps (a dump drains pages to the images while frozen), reset the tracker, then either
    /// thaw and write the pages (pre-dump, cr_pre_dump_finish) or write the remaining images
    /// while still frozen (dump), commit the images, and release the tree.
    /// </summary>
    public DumpResult Run()
    {
        var trace = new PhaseTrace();
        using var run = Begin();
        run.Trace = trace;
        PrefetchParent(run);
        trace.Mark("begin");
        FreezeTree(run);
        trace.Mark("freeze");
        CollectPagemaps(run);
        trace.Mark("collect");
        ResetTracking(run);
        trace.Mark("reset");
        var writeWatch = Stopwatch.StartNew();
        if (_pre)
            ThawAndWritePages(run);
        else
            WriteFrozenImages(run);
        run.WriteWall += writeWatch.Elapsed;
        trace.Mark("write");
        var stats = CommitImages(run);
        trace.Mark("commit");
        ReleaseTree(run);
        trace.Mark("release");
        trace.End(_pre ? "pre-dump" : "dump");
        return new DumpResult(stats with { WallClock = new WallClock(run.CollectWall, run.WriteWall, run.Wall.Elapsed) },
            run.Tasks.Select(x => x.Task.Pid).ToList(), run.Tracker, _warnings);
    }

    /// <summary>Resolves the tracker, checks the root, opens the parent, the images directory and the page server.</summary>
    private DumpRun Begin()
    {
        var tracker = Criu.ResolveTracker(_k, _o.Tracker, _warnings, _o.AutoFallback, _o.StrictTracker);
        var root = _k.FindTask(_o.Pid);
        if (root is null || !root.Alive)
            throw new DumperException("no such process to dump", _o.Pid);

        var (parentSet, parentUptimeUs) = OpenParent();
        PrepareImagesDir(_o.ImagesDir, parentSet);
        var dir = ImageDirectory.Create(_o.ImagesDir);
        PageServer.PageServerClient? pageServer = null;
        try
        {
            if (_o.PrevImagesDir is not null)
                dir.LinkParent(_o.PrevImagesDir);
            pageServer = ConnectPageServer();
            var history = _pre || SievesFinalDump ? _o.History : null;
            // A final dump without a parent has nothing to elide or take deltas against; a
            // history rebuilt from images would only cost it the streaming of spliced pages.
            if (history is { FromChain: true } && !_pre && parentSet is null)
                history = null;
            history?.Begin(parentSet?.Path, _o.ImagesDir);
            return new DumpRun
            {
                Tracker = tracker, Track = _pre || _o.TrackMem,
                ParentSet = parentSet, ParentUptimeUs = parentUptimeUs,
                Dir = dir, PageServer = pageServer,
                Stream = _pre ? null : new PageXferQueue(StreamBudgetBytes),
                History = history,
                Rates = DeltaRates(),
            };
        }
        catch
        {
            pageServer?.Dispose();
            dir.Dispose();
            throw;
        }
    }

    /// <summary>Freezes the tree and reads each live task's VMAs (smaps, plus [vsyscall] from maps).</summary>
    private void FreezeTree(DumpRun run)
    {
        var freezeWatch = Stopwatch.StartNew();
        run.Frozen = _k.Freeze(_o.Pid);
        var freezeWall = freezeWatch.Elapsed;
        run.Trace.Mark("freeze.tree");
        foreach (var t in _k.Tree(_o.Pid))
        {
            if (!t.Alive)
            {
                _warnings.Add(new DumperWarning("zombie", $"task {t.Pid} is a zombie and is not dumped"));
                continue;
            }
            // smaps carries VmFlags; [vsyscall] (the gate area) shows only in maps on older
            // kernels (Linux's smaps lists it too since 4.x; then it is there once), and CRIU keeps it in mm.
            var vmas = SmapsParser.Parse(_k.Smaps(t.Pid));
            if (!vmas.Any(v => v.IsVsyscall))
                vmas.AddRange(SmapsParser.ParseMaps(_k.Maps(t.Pid)).Where(v => v.IsVsyscall));
            run.Tasks.Add(new TaskState { Task = t, Vmas = vmas, Threads = _k.Threads(t.Pid) });
        }
        // Every thread is a task the freezer stops (and CRIU seizes one by one).
        run.FreezeNs = _cost.FreezeNsPerTask * (ulong)run.Tasks.Sum(ts => ts.Threads.Count);
        CheckTimeout(run.FreezeNs, freezeWall);
        run.UptimeUs = _k.UptimeNs / 1000;
    }

    /// <summary>
    /// Walks every task's VMAs with the tracker against its parent pagemap and queues the pages in
    /// its page pipe; a dump drains the pipes to the images as they fill, still frozen.
    /// </summary>
    private void CollectPagemaps(DumpRun run)
    {
        var collectWatch = Stopwatch.StartNew();
        var tracker = run.Tracker;
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
        var serverParents = AskPageServerParents(run.PageServer, run.ParentSet, run.Tasks);
        bool parentRead = ParentWasReadMode(run.ParentSet);
        foreach (var ts in run.Tasks)
        {
            var parentDigests = OpenTaskParent(run, ts, serverParents);
            run.Trace.Mark("collect.parent");
            // A kept pipe (a dump with a sieve) holds copies: the store fetches nothing.
            bool fetch = !_pre && run.History is null && PageCollector.FetchesPages(_k.Capabilities, _o.PageStore, run.PageServer is not null);
            if (!_pre && run.History is not null)
            {
                // Elision and deltas need the pages' bytes and the pagemap writer in order: the
                // pipe keeps copies (the collector digests them for the VMA checksums) and is
                // written through the sieve chunk by chunk, still frozen.
                ts.Xfer = new PageXfer(OpenSink(run.Dir, run.PageServer, ts.Task.Pid));
                ts.Sieve = NewSieve(run, ts, tracker == TrackerKind.Content);
                ts.Pipe = new PagePipe();
            }
            else if (!_pre)
            {
                // The content tracker digests the spliced pages itself; the page store need not.
                // Pages the store fetches are digested by the store, for the checksums and for
                // the content tracker's digests of them.
                bool storeDigests = fetch
                    ? _o.RecordChecksums || tracker == TrackerKind.Content
                    : _o.RecordChecksums && !PageCollector.ChecksumsIncludeWrittenPages(tracker == TrackerKind.Content, streamed: true);
                int pid = ts.Task.Pid;
                ts.Xfer = new PageXfer(OpenSink(run.Dir, run.PageServer, pid), digests: storeDigests)
                {
                    Fetch = fetch ? (va, dst) => ReadFrozen(pid, va, dst) : null,
                };
                ts.Pipe = new PagePipe(run.Stream!, ts.Xfer, run.Frozen!);
            }
            else
                ts.Pipe = new PagePipe();
            var collector = new PageCollector(_k, run.Frozen!, ts.Task.Pid, walker, ts.Pipe, ts.ParentPagemap, _pre, _o.RecordChecksums && !_pre, _imgPerPage)
            {
                ReadMode = _pre && _o.PreDumpMode == PreDumpMode.Read,
                ParentSkippedUnreadable = parentRead,
                FetchPages = fetch,
            };
            if (tracker == TrackerKind.Content)
                collector.TrackContent(parentDigests);
            foreach (var v in ts.Vmas)
            {
                collector.CollectVma(v, spans);
                if (!_pre && ts.Pipe.BufferedBytes >= ChunkBytes)
                    DrainChunk(run, ts);
            }
            if (!_pre)
                DrainChunk(run, ts);
            ts.Scanned = collector.Scanned;
            ts.Checksums = collector.Checksums;
            ts.Digests = collector.Digests;
            ts.DigestsPending = collector.FetchedDigestsPending;
            run.MemdumpNs += (ulong)(collector.Scanned * _cost.ScanNsPerPage) + CostModel.Ns(collector.CollectedBytes - collector.DeferredBytes, _cost.CopyBytesPerSecond);
        }
        run.MemdumpNs += _cost.ProcParseNsPerTask * (ulong)run.Tasks.Count;
        run.CollectWall = collectWatch.Elapsed;
    }

    /// <summary>
    /// A final dump elides and sends deltas into local images or to a page server (deltas only
    /// where it announced them), not with lazy pages: a lazy dump's pages stay on the source.
    /// </summary>
    private bool SievesFinalDump => _o.History is not null && _o.LazyPages is null;

    /// <summary>A dump's chunk: a streamed pipe hands its iovecs on; a kept one (with a sieve) is written through it now.</summary>
    private static void DrainChunk(DumpRun run, TaskState ts)
    {
        if (ts.Sieve is null)
        {
            ts.Pipe.Drain();
            return;
        }
        SeedFromChain(run, ts);
        ts.Xfer!.Write(ts.Pipe, ts.Sieve);
        ts.Pipe.Reset();
    }

    /// <summary>
    /// Reads the root task's parent pagemap (and digests, for the content tracker) on another
    /// core while this one freezes the tree and reads its VMAs: the parent images do not change
    /// with the tree, and <see cref="OpenTaskParent"/> still decides whether they are used (and
    /// rethrows what reading them failed with only then).
    /// </summary>
    private void PrefetchParent(DumpRun run)
    {
        if (run.ParentSet is not { } set || run.Tracker == TrackerKind.None || run.PageServer is not null || !set.HasPagemap(_o.Pid))
            return;
        bool digests = run.Tracker == TrackerKind.Content;
        int pid = _o.Pid;
        run.ParentPrefetch = Task.Run(() => (set.ReadPagemap(pid), digests ? set.ReadPageDigests(pid) : null));
    }

    /// <summary>
    /// The sieve of one task. A history rebuilt from images (<see cref="SentPages.FromImages"/>)
    /// opens the task's parent chain (when it serves as the parent) and records the digests of
    /// every page the new pagemap covers, unless the content tracker records them already.
    /// </summary>
    private static PageSieve NewSieve(DumpRun run, TaskState ts, bool contentTracker)
    {
        var h = run.History!;
        if (!h.FromChain)
            return new PageSieve(h, ts.Task.Pid, ts.ParentPagemap, run.Rates);
        if (ts.ParentPagemap is not null && run.ParentSet is not null)
            ts.Chain ??= h.OpenChain(run.ParentSet, ts.Task.Pid, readPages: run.PageServer is null);
        return new PageSieve(h, ts.Task.Pid, ts.ParentPagemap, run.Rates)
        {
            Recorded = contentTracker ? null : new PageDigestMap(),
            ParentDigests = ts.Chain?.Digests,
        };
    }

    /// <summary>A history rebuilt from images: the digests and bases of the pages the pipe is about to write.</summary>
    private static void SeedFromChain(DumpRun run, TaskState ts)
    {
        if (run.History is not { FromChain: true } h || ts.Chain is null || ts.ParentPagemap is null)
            return;
        var written = ts.Pipe.Iovs.Where(i => !i.Hole).Select(i => (i.Va, i.Bytes >> PageGeometry.PageShift));
        var (noDigest, baseBytes) = h.Seed(ts.Chain, ts.Task.Pid, ts.ParentPagemap, written);
        run.DeltaCounters = run.DeltaCounters.Add(new DeltaCounters { PagesNoDigest = noDigest });
        run.BaseBytes += baseBytes;
    }

    /// <summary>
    /// Decides whether the parent images can serve as this task's parent, sets its parent pagemap,
    /// and returns the parent's page digests when the content tracker needs them.
    /// </summary>
    private PageDigestMap? OpenTaskParent(DumpRun run, TaskState ts, HashSet<int>? serverParents)
    {
        var t = ts.Task;
        var parentSet = run.ParentSet;
        var tracker = run.Tracker;
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
        if (parentOk && run.ParentUptimeUs is ulong pu && t.StartTimeNs / 1000 > pu)
        {
            parentOk = false;
            _warnings.Add(new DumperWarning("pid-reuse", $"task {t.Pid} started after the parent dump: its parent images are ignored (PID reuse)"));
        }
        if (parentOk && tracker == TrackerKind.UffdWp && _k.InstalledUserfaultfd(t.Pid) is null)
            parentOk = false; // no write-protect history for this task: everything counts as written
        if (!parentOk)
            return null;
        if (serverParents is null && t.Pid == _o.Pid && run.ParentPrefetch is { } prefetched)
        {
            var (pagemap, digests) = prefetched.GetAwaiter().GetResult();
            ts.ParentPagemap = pagemap;
            return tracker == TrackerKind.Content ? digests : null;
        }
        // On a page server the parent is the server's: what this history sent it, when it holds
        // that, else a stand-in covering everything (the server checks every hole).
        ts.ParentPagemap = serverParents is null ? parentSet!.ReadPagemap(t.Pid)
            : run.History?.CoverageOf(t.Pid) ?? PagemapImage.AllInParent("parent on the page server");
        return tracker == TrackerKind.Content ? parentSet!.ReadPageDigests(t.Pid) : null;
    }

    /// <summary>Re-arms the tracker (the pages are collected), still frozen, so the next dump sees only new writes.</summary>
    private void ResetTracking(DumpRun run)
    {
        if (!run.Track)
            return;
        ulong resetPages = 0;
        foreach (var ts in run.Tasks)
            resetPages += ResetTracker(run.Tracker, ts);
        run.MemdumpNs += (ulong)(resetPages * _cost.ResetNsPerPage);
    }

    /// <summary>
    /// A pre-dump's second half (cr_pre_dump_finish): the frozen time ends before the pages are
    /// written, the tree runs on, and the collected pages go to the images (or the page server),
    /// through the elision and delta sieve when a history is kept.
    /// </summary>
    private void ThawAndWritePages(DumpRun run)
    {
        _k.LetTimePass(run.FreezeNs + run.MemdumpNs);
        run.Frozen!.Thaw();
        run.Trace.Mark("write.thaw");
        foreach (var ts in run.Tasks)
        {
            if (_o.PreDumpMode == PreDumpMode.Read)
                run.ReadNs += ReadDeferred(ts.Task.Pid, ts.Pipe);
            using var xfer = new PageXfer(OpenSink(run.Dir, run.PageServer, ts.Task.Pid));
            var sieve = run.History is null ? null : NewSieve(run, ts, run.Tracker == TrackerKind.Content);
            if (sieve is not null)
                SeedFromChain(run, ts);
            xfer.Write(ts.Pipe, sieve);
            run.Trace.Mark("write.pages");
            if (sieve is not null)
            {
                run.DeltaCounters = run.DeltaCounters.Add(sieve.Counters);
                run.EncodedBytes += sieve.EncodedBytes + sieve.SampledBytes;
            }
            if ((ts.Digests ?? sieve?.Recorded) is { } digests)
                run.Dir.WritePageDigests(ts.Task.Pid, digests);
            run.Trace.Mark("write.digests");
            run.PageStats.Add(xfer.Finish());
            run.Trace.Mark("write.finish");
            if (run.History is { FromChain: false } h && xfer.Sink is PageServerSink server)
                h.NoteCoverage(ts.Task.Pid, server.Covered);
            if (_o.AutoDedup) PageXfer.Dedup(run.ParentSet, ImageNames.Pagemap(ts.Task.Pid), xfer.WrittenRanges);
        }
        run.Dir.WriteInventory(new inventory_entry { ImgVersion = 0, DumpUptime = run.UptimeUs, PreDumpMode = (uint)_o.PreDumpMode });
        run.MemdumpNs += run.ReadNs;
    }

    /// <summary>
    /// A dump's second half, still frozen: the streamed pages are flushed and finished, shared
    /// anonymous memory is dumped once per object, then pstree, core, ids, mm and files.
    /// </summary>
    private void WriteFrozenImages(DumpRun run)
    {
        run.Stream!.Flush();
        run.Trace.Mark("write.flush");
        foreach (var ts in run.Tasks)
        {
            if (ts.Sieve is not null)
            {
                run.DeltaCounters = run.DeltaCounters.Add(ts.Sieve.Counters);
                run.EncodedBytes += ts.Sieve.EncodedBytes + ts.Sieve.SampledBytes;
            }
            run.PageStats.Add(ts.Xfer!.Finish());
            if (ts.Digests is not null && ts.DigestsPending)
                PageCollector.FillFetchedDigests(ts.Digests, ts.Xfer.Digests);
            if ((ts.Digests ?? ts.Sieve?.Recorded) is { } digests)
                run.Dir.WritePageDigests(ts.Task.Pid, digests);
            AddDigests(ts.Checksums, ts.Xfer.Digests);
            if (_o.AutoDedup) PageXfer.Dedup(run.ParentSet, ImageNames.Pagemap(ts.Task.Pid), ts.Xfer.WrittenRanges);
            ts.Xfer.Dispose();
            ts.Xfer = null;
        }
        (run.ShScanned, run.ShWritten) = DumpShmem(run.Dir, run.PageServer, run.Tasks, run.PageStats);
        WriteTaskImages(run.Dir, run.Tasks, run.Track ? run.UptimeUs : null);
    }

    /// <summary>The compression rate the cost model charges for this dump's page store (zstd: a third of LZ4's).</summary>
    private double CompressBytesPerSecond() =>
        _o.PageStore.Compression == PageCompression.Zstd ? _cost.CompressBytesPerSecond / 3 : _cost.CompressBytesPerSecond;

    /// <summary>What deltas cost and save per byte, as <see cref="CommitImages"/> charges it (SizeNsPerByte: compressing a byte, which a delta page is spared).</summary>
    private DeltaCostRates DeltaRates() => new(
        SizeNsPerByte: _o.PageStore.Compression == PageCompression.None ? 0 : 1e9 / CompressBytesPerSecond() / Math.Max(1, _o.PageStore.Parallelism),
        EncodeNsPerByte: _cost.DeltaEncodeBytesPerSecond <= 0 ? 0 : 1e9 / _cost.DeltaEncodeBytesPerSecond,
        LinkNsPerByte: _cost.LinkBytesPerSecond <= 0 ? 0 : 1e9 / _cost.LinkBytesPerSecond);

    /// <summary>
    /// Charges the write to the cost model, writes stats-dump, and commits the images directory
    /// (after the page server has acknowledged every page: a dump is complete only then).
    /// </summary>
    private DumpStats CommitImages(DumpRun run)
    {
        var ps = run.PageStats;
        ulong stored = ps.BytesStored, raw = ps.BytesRaw;
        // Pages considered for deltas were also encoded against their cached versions, and the
        // deltas compressed in blocks as the pages are (locally; a page server gets them as
        // encoded and compresses them itself).
        run.CompressNs = (_o.PageStore.Compression == PageCompression.None ? 0
            : CostModel.Ns(raw, CompressBytesPerSecond()) / (ulong)Math.Max(1, _o.PageStore.Parallelism)
                + (run.PageServer is null ? CostModel.Ns(ps.BytesDelta, CompressBytesPerSecond()) : 0))
            + CostModel.Ns(run.EncodedBytes, _cost.DeltaEncodeBytesPerSecond);
        // A history rebuilt from images also reads the delta bases back from the parent chain.
        run.MemwriteNs = run.CompressNs + CostModel.Ns(stored + ps.BytesDeltaStored + run.BaseBytes, _cost.DiskBytesPerSecond);

        var stats = new DumpStats
        {
            FreezingTime = RestoreStats.Us(run.FreezeNs),
            FrozenTime = RestoreStats.Us(run.FrozenNs(_pre)),
            MemdumpTime = RestoreStats.Us(run.MemdumpNs),
            MemwriteTime = RestoreStats.Us(run.MemwriteNs),
            PagesScanned = run.Tasks.Aggregate(0UL, (s, x) => s + x.Scanned) * (ulong)_imgPerPage,
            PagesSkippedParent = ps.PagesSkippedParent,
            PagesWritten = ps.PagesWritten + ps.PagesDelta - run.ShWritten,
            PagesLazy = ps.PagesLazy,
            PagePipes = (ulong)run.Tasks.Count,
            PagePipeBufs = (ulong)run.Tasks.Sum(x => x.Pipe.BufferCount),
            ShpagesScanned = run.ShScanned,
            ShpagesSkippedParent = 0,
            ShpagesWritten = run.ShWritten,
            BytesRaw = raw + (ps.PagesDelta << PageGeometry.PageShift),
            BytesCompressed = stored,
            ZeroPagesSkipped = ps.ZeroPagesSkipped,
            PagesStoredRaw = ps.PagesStoredRaw,
            Tracker = TrackerNames.Name(run.Tracker),
            Compression = _o.PageStore.Compression switch { PageCompression.Lz4 => "lz4", PageCompression.Zstd => "zstd", _ => "none" },
            CompressTime = RestoreStats.Us(run.CompressNs),
            Delta = run.History is null ? null : run.DeltaCounters,
            WallClock = new WallClock(run.CollectWall, run.WriteWall, run.Wall.Elapsed),
        };
        run.PageServer?.Close();
        run.Dir.WriteDumpStats(stats.ToProto());
        run.Dir.Commit();
        run.History?.Commit(_o.ImagesDir, run.DeltaCounters);
        return stats;
    }

    /// <summary>
    /// The tree after its images are complete: a pre-dump's tree already runs (the copy of read
    /// mode and the write time pass); a dump's tree resumes with --leave-running, is left in a
    /// group stop with --leave-stopped (criu/cr-dump.c switches it to TASK_STOPPED), otherwise it
    /// is killed (CRIU's default).
    /// </summary>
    private void ReleaseTree(DumpRun run)
    {
        if (_pre)
        {
            _k.LetTimePass(run.ReadNs + run.MemwriteNs);
            return;
        }
        _k.LetTimePass(run.FrozenNs(_pre));
        if (_o.LeaveStopped)
        {
            run.Frozen!.ThawStopped();
            return;
        }
        if (!_o.LeaveRunning)
            KillTree(run.Tasks);
        run.Frozen!.Thaw(); // after a kill nothing is left to thaw; the lease ends
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
    /// <summary>A read of a frozen task's memory for the page store's workers (any thread).</summary>
    private void ReadFrozen(int pid, ulong va, Span<byte> dst)
    {
        var r = _k.ReadMemory(pid, va, dst);
        if (!r.Ok)
            throw new DumperException($"cannot read task memory ({r.Error})", pid, null, va, va + (ulong)dst.Length,
                inner: new KernelException(r.Error, "process_vm_readv"));
    }

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
                if (v.IsAnonShared)
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

    /// <summary>SS_DISABLE (include/uapi/linux/signal.h): no alternate signal stack.</summary>
    private const uint SsDisable = 2;

    private void WriteTaskImages(ImageDirectory dir, List<TaskState> tasks, ulong? uptimeUs)
    {
        // One reg file per path; an unlinked file ("(deleted)" in maps) per path and inode, since
        // two files unlinked under the same name are different files.
        var files = new Dictionary<string, uint>();
        var mappedAt = new Dictionary<uint, (int Pid, VmaInfo Vma)>();
        uint FileId(int pid, VmaInfo v)
        {
            string key = v.Name!.EndsWith(DeletedSuffix, StringComparison.Ordinal) ? $"{v.Name}\0{v.Inode}" : v.Name!;
            if (!files.TryGetValue(key, out var id))
            {
                files[key] = id = (uint)files.Count + 1;
                mappedAt[id] = (pid, v);
            }
            return id;
        }
        var pstree = new List<pstree_entry>();
        var pids = tasks.Select(x => x.Task.Pid).ToHashSet();
        foreach (var ts in tasks)
        {
            var t = ts.Task;
            int ppid = pids.Contains(t.Ppid) && t.Pid != _o.Pid ? t.Ppid : 0;
            var entry = new pstree_entry { Pid = (uint)t.Pid, Ppid = (uint)ppid, Pgid = (uint)t.Pgid, Sid = (uint)t.Sid };
            entry.Threads.AddRange(ts.Threads.Select(tid => (uint)tid));
            pstree.Add(entry);
            // One core per thread, as dump_task_core_all (the leader: task_core, thread_core and
            // registers) and dump_task_thread (the others: thread_core and registers) write them.
            foreach (int tid in ts.Threads)
                dir.WriteCore(tid, BuildCore(t, tid));
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
            mm.ExeFileId = exe is null ? 0 : FileId(t.Pid, exe);
            foreach (var v in ts.Vmas)
            {
                ulong shmid = v.IsAnonShared ? v.Inode : v.IsFile ? FileId(t.Pid, v) : 0;
                var e = new vma_entry
                {
                    Start = v.Start, End = v.End, Pgoff = v.IsFile || v.IsAnonShared ? v.PgOff : 0, Shmid = shmid,
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
        var remaps = new List<remap_file_path_entry>();
        var regs = new List<file_entry>();
        foreach (var (id, (pid, v)) in mappedAt.OrderBy(f => f.Key))
        {
            var reg = new reg_file_entry { Id = id, Flags = 0, Pos = 0, Name = v.Name!, Fown = new fown_entry() };
            if (v.Name!.EndsWith(DeletedSuffix, StringComparison.Ordinal))
            {
                reg.Name = v.Name[..^DeletedSuffix.Length];
                var st = DumpGhostFile(dir, pid, v, reg.Name, (uint)remaps.Count + 1);
                reg.Size = (ulong)st.Size;
                reg.Mode = st.Mode;
                remaps.Add(new remap_file_path_entry { OrigId = id, RemapId = (uint)remaps.Count + 1, RemapType = remap_type.Ghost });
            }
            else if (_k.FileSize(reg.Name) is long size)
                reg.Size = (ulong)size;
            regs.Add(new file_entry { Type = fd_types.Reg, Id = id, Reg = reg });
        }
        dir.WriteFiles(regs);
        if (remaps.Count > 0)
            dir.WriteRemapFpath(remaps);
        dir.WritePstree(pstree);
        var inv = new inventory_entry
        {
            ImgVersion = 2, FdinfoPerId = true, NsPerId = true, Lsmtype = lsmtype.NoLsm,
            RootIds = new task_kobj_ids_entry { VmId = (uint)_o.Pid, FilesId = (uint)_o.Pid, FsId = (uint)_o.Pid, SighandId = (uint)_o.Pid },
        };
        if (uptimeUs is ulong u) inv.DumpUptime = u;
        dir.WriteInventory(inv);
    }

    /// <summary>What maps appends to the name of a file whose last link is gone (fs/d_path.c).</summary>
    private const string DeletedSuffix = " (deleted)";

    /// <summary>
    /// A mapped file that has no name left (criu/files-reg.c dump_ghost_file): its bytes, read
    /// through /proc/PID/map_files while the tree is frozen, go into ghost-file-ID.img with its
    /// owner, mode and times, as CRIU carries a file that only the task can still reach. Larger
    /// than <see cref="DumpOptions.GhostLimit"/> is refused, as CRIU's --ghost-limit does.
    /// </summary>
    private FileStat DumpGhostFile(ImageDirectory dir, int pid, VmaInfo v, string path, uint ghostId)
    {
        var r = _k.StatMapFiles(pid, v.Start, out var st);
        if (!r.Ok)
            throw new DumperException($"cannot stat the unlinked file {path} through map_files ({r.Error})", pid, _o.ImagesDir, v.Start, v.End);
        if (st.Nlink != 0)
            throw new DumperException($"{path} was unlinked but the file still has {st.Nlink} other name(s): link remaps are not supported", pid, _o.ImagesDir, v.Start, v.End);
        if (!st.IsRegular)
            throw new DumperException($"the unlinked file {path} is not a regular file (mode 0{Convert.ToString(st.Mode, 8)})", pid, _o.ImagesDir, v.Start, v.End);
        if (st.Size > _o.GhostLimit)
            throw new DumperException($"cannot dump the unlinked file {path} of {st.Size} bytes: larger than the ghost file limit ({_o.GhostLimit} bytes)", pid, _o.ImagesDir, v.Start, v.End);
        var contents = new byte[st.Size];
        for (long at = 0; at < contents.LongLength;)
        {
            var n = _k.ReadMapFiles(pid, v.Start, at, contents.AsSpan((int)at));
            if (!n.Ok)
                throw new DumperException($"cannot read the unlinked file {path} through map_files ({n.Error})", pid, _o.ImagesDir, v.Start, v.End);
            if (n.Value == 0)
                throw new DumperException($"the unlinked file {path} shrank to {at} bytes while being read", pid, _o.ImagesDir, v.Start, v.End);
            at += n.Value;
        }
        static timeval Tv(long ns) => new() { TvSec = (ulong)(ns / 1_000_000_000), TvUsec = (ulong)(ns % 1_000_000_000 / 1000) };
        dir.WriteGhostFile(ghostId, new ghost_file_entry
        {
            Uid = st.Uid, Gid = st.Gid, Mode = st.Mode, Dev = st.Dev, Ino = st.Inode,
            Atim = Tv(st.AtimeNs), Mtim = Tv(st.MtimeNs),
        }, contents);
        return st;
    }

    /// <summary>The core image of thread <paramref name="tid"/> of process <paramref name="t"/>.</summary>
    private core_entry BuildCore(TaskInfo t, int tid)
    {
        TaskRegisters? regs = null;
        if (_k.Capabilities.CanReadRegisters)
        {
            try
            {
                regs = _k.GetRegisters(tid);
            }
            catch (KernelException e)
            {
                // CRIU cannot dump without registers; a memory checkpoint of a process we may not
                // ptrace still can, so the core says so by leaving thread_info out.
                _warnings.Add(new DumperWarning("registers-omitted", $"registers of task {tid} omitted: {e.Message}"));
            }
        }
        else
            _warnings.Add(new DumperWarning("registers-omitted", $"registers of task {tid} omitted: the kernel does not offer them"));
        bool leader = tid == t.Pid;
        // A thread's own name (/proc/PID/task/TID/comm, prctl PR_SET_NAME) rides in thread_core.
        string comm = leader ? t.Comm : _k.FindTask(tid)?.Comm ?? t.Comm;
        var core = new core_entry
        {
            Mtype = (core_entry.Types.march)_k.Capabilities.CriuMtype,
            // thread_core as dump_thread_core fills it: robust futex list, scheduling, the blocked
            // signal mask, the alternate signal stack (none: SS_DISABLE) and the thread's comm.
            ThreadCore = new thread_core_entry
            {
                FutexRla = 0, FutexRlaLen = 0,
                SchedNice = 0, SchedPolicy = 0, SchedPrio = 0,
                BlkSigset = 0,
                Sas = new thread_sas_entry { SsSp = 0, SsSize = 0, SsFlags = SsDisable },
                Comm = comm,
            },
        };
        if (leader)
            core.Tc = new task_core_entry { TaskState = 1, ExitCode = 0, Personality = 0, Flags = 0, BlkSigset = 0, Comm = t.Comm };
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

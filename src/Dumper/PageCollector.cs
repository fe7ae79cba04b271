using CriuSharp.Dumper.Proc;
using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>
/// Decides which pages of a task go into the images (criu/mem.c generate_vma_iovs and
/// should_dump_page) and puts them into the task's <see cref="PagePipe"/>:
/// <code>
///  VMA filter: vsyscall, vvar, shared file (contents in the file), shmem (dumped per object)  → skip
///              hugetlb in a pre-dump → skip (the final dump takes it whole, no parent)
///              vdso → every page, always
///  per page:   not present/swapped, zero PFN, guard, pte marker             → skip
///              page-cache page of a private file mapping (not COWed)        → skip
///              clean (tracker) and the parent pagemap covers it             → PE_PARENT hole
///              otherwise                                                    → copied into the pipe
/// </code>
/// With the content tracker the kernel says nothing about writes: every populated page is read,
/// digested (<see cref="PageDigest"/>) and compared with the parent's digest of the same address
/// (page-digests-PID.img); "clean" then means "same bytes as in the parent".
/// A final dump also hashes each VMA's contents (populated pages, zero pages excluded) at freeze
/// time; restore recomputes the same hash.
/// </summary>
internal sealed class PageCollector
{
    private readonly IKernel _k;
    private readonly FreezeLease? _frozen;
    private readonly int _pid;
    private readonly PageWalker _walker;
    private readonly PagePipe _pipe;
    private readonly PagemapImage? _parent;
    private readonly bool _pre;
    private readonly bool _hash;
    private readonly int _imgPerPage;
    private readonly int _shift;
    private int _parentCursor;
    private bool _content;
    private PageDigestMap? _parentDigests;
    private bool _fetch;
    private byte[]? _scratch;
    private nint[]? _frames;
    private nint[]? _spliced;
    private ulong[]? _chunkDigests;
    private List<Chunk>? _chunks;

    public PageCollector(IKernel k, FreezeLease? frozen, int pid, PageWalker walker, PagePipe pipe, PagemapImage? parent, bool preDump, bool hash, int imgPerPage)
    {
        _k = k;
        _frozen = frozen;
        _pid = pid;
        _walker = walker;
        _pipe = pipe;
        _parent = parent;
        _pre = preDump;
        _hash = hash;
        _imgPerPage = imgPerPage;
        _shift = k.Capabilities.PageShift;
    }

    /// <summary>
    /// The page store fetches the written pages itself (<see cref="FetchesPages"/>): set when the
    /// store has compression workers to read with, so reading, digesting and compressing run on
    /// every worker. With a single writing thread the collector reads (splice) instead, so that
    /// reading and compressing still overlap on two threads.
    /// </summary>
    public bool FetchPages
    {
        get => _fetch;
        init => _fetch = value && FetchesPages(_k.Capabilities, _pipe.Streamed);
    }

    /// <summary>
    /// A dump on a kernel whose splice copies and that may be read from several threads (the real
    /// host) leaves the written pages in the frozen task: the page store's workers read each block
    /// (<see cref="PagePipe.ReserveFetched"/>) where they compress it, with no staging copy, and
    /// digest what they store, so the VMA checksums and the content tracker's digests of those
    /// pages come from the store (<see cref="PageXfer.Digests"/>).
    /// </summary>
    public static bool FetchesPages(KernelCapabilities caps, bool streamed) => streamed && caps.SpliceCopies && caps.ConcurrentReads;

    /// <summary>Whether a dump with these page-store options lets the store fetch its pages (see <see cref="FetchPages"/>).</summary>
    public static bool FetchesPages(KernelCapabilities caps, PageStoreOptions store, bool pageServer) =>
        FetchesPages(caps, streamed: true) && store.Compression != PageCompression.None && store.Parallelism > 1 && !pageServer;

    /// <summary>
    /// Some digests in <see cref="Digests"/> are placeholders for pages the page store fetched:
    /// <see cref="FillFetchedDigests"/> puts in the store's digests once it has finished.
    /// </summary>
    public bool FetchedDigestsPending { get; private set; }

    /// <summary>Replaces placeholders in <paramref name="map"/> with the store's digests (all-zero pages, which the store does not report, digest to 0 as the placeholders do).</summary>
    public static void FillFetchedDigests(PageDigestMap map, IReadOnlyList<(ulong Va, ulong Digest)> stored)
    {
        foreach (var (va, d) in stored)
            map.TrySet(va, d);
    }

    public ulong Scanned { get; private set; }
    /// <summary>Bytes put into the pipe (copied or spliced); the cost model charges the page copy for both, as CRIU's parasite moves every page once.</summary>
    public long CollectedBytes { get; private set; }
    public List<(ulong Start, ulong End, ulong Hash)> Checksums { get; } = [];
    /// <summary>With the content tracker: the digest of every page the pagemap holds (written or left to the parent).</summary>
    public PageDigestMap? Digests { get; private set; }

    /// <summary>
    /// A pre-dump in CRIU's read mode (--pre-dump-mode read): the pipe gets the iovecs only, and
    /// the pages are copied after the thaw (<see cref="PagePipe.FillDeferred"/>); VMAs without
    /// PROT_READ are skipped, as process_vm_readv cannot read them (criu/mem.c).
    /// </summary>
    public bool ReadMode { get; init; }

    /// <summary>
    /// The parent was a read-mode pre-dump, which skipped VMAs without PROT_READ: such a VMA has
    /// no parent here and is dumped whole (criu/mem.c generate_vma_iovs).
    /// </summary>
    public bool ParentSkippedUnreadable { get; init; }

    /// <summary>Bytes reserved in the pipe but left for <see cref="PagePipe.FillDeferred"/> (read mode).</summary>
    public long DeferredBytes { get; private set; }

    /// <summary>Decide dirtiness by content against <paramref name="parentDigests"/> (null: no usable parent, all pages are dumped).</summary>
    public void TrackContent(PageDigestMap? parentDigests)
    {
        _content = true;
        _parentDigests = _parent is null ? null : parentDigests;
        Digests = new PageDigestMap();
    }

    public static bool IsDumpedPrivately(VmaInfo v) =>
        !(v.IsVsyscall || v.Name == "[vvar]" || (v.IsVvar && !v.IsVdso) || v.IsShmem || (v.Shared && v.IsFile) || v.Shared);

    public void CollectVma(VmaInfo v, List<PageSpan> spans)
    {
        if (!IsDumpedPrivately(v))
            return;
        if (_pre && v.IsHugetlb)
            return;
        bool unreadable = (v.Prot & VmaInfo.ProtRead) == 0;
        if (_pre && ReadMode && unreadable)
            return;
        Scanned += v.Length >> _shift;
        var h = new VmaHash();
        if (v.IsVdso)
        {
            Emit(v.Start, v.Length >> _shift, dump: true, ref h);
        }
        else
        {
            bool allowParent = _parent is not null && !v.IsHugetlb && !(ParentSkippedUnreadable && unreadable);
            ulong window = WalksInWindows(v, allowParent) ? WalkWindowBytes : v.Length;
            for (ulong from = v.Start; from < v.End; from += window)
            {
                spans.Clear();
                _walker.Walk(_pid, window == v.Length ? v : v with { Start = from, End = Math.Min(v.End, from + window) }, spans);
                foreach (var s in spans)
                {
                    if (v.IsFile && (s.Bits & PageBits.File) != 0 && (s.Bits & PageBits.Swapped) == 0)
                        continue; // not COWed yet: the file holds it
                    if (_content)
                        CollectByContent(s.Va, s.NrPages, allowParent, ref h);
                    else if (allowParent && (s.Bits & PageBits.Dirty) == 0)
                        EmitMaybeHole(s.Va, s.NrPages, ref h);
                    else
                        Emit(s.Va, s.NrPages, dump: true, ref h);
                }
            }
        }
        if (_hash)
            Checksums.Add((v.Start, v.End, h.Value));
    }

    /// <summary>
    /// A dump whose page store fetches the pages itself (the real host, <see cref="FetchPages"/>)
    /// walks a large VMA a window at a time, so the store's workers start on the first window's
    /// pages while the rest is walked (PAGEMAP_SCAN of a 1 GiB VMA took 12-17 ms, with the
    /// workers idle). Not where this thread reads and compares the pages (the content tracker
    /// against a parent): its ring of chunks would drain at every window.
    /// </summary>
    private bool WalksInWindows(VmaInfo v, bool allowParent) =>
        _fetch && !v.IsHugetlb && v.Length > WalkWindowBytes && !(_content && allowParent && _parentDigests is not null);

    /// <summary>The window of <see cref="WalksInWindows"/>.</summary>
    private const ulong WalkWindowBytes = 64 << 20;

    /// <summary>Clean pages become holes only where the parent pagemap has an entry ("Hole not found in parent" otherwise).</summary>
    private void EmitMaybeHole(ulong va, ulong nr, ref VmaHash h)
    {
        var entries = _parent!.Entries;
        ulong end = va + (nr << _shift);
        while (va < end)
        {
            int idx = _parent.FirstEntryEndingAfter(va);
            _parentCursor = idx < 0 ? entries.Count : idx;
            if (_parentCursor >= entries.Count)
            {
                Emit(va, (end - va) >> _shift, dump: true, ref h);
                return;
            }
            var e = entries[_parentCursor];
            bool usable = (PagemapImage.FlagsOf(e) & (PagemapFlags.Present | PagemapFlags.Parent | PagemapFlags.Delta)) != 0;
            if (e.Vaddr > va)
            {
                ulong stop = Math.Min(end, e.Vaddr);
                Emit(va, (stop - va) >> _shift, dump: true, ref h);
                va = stop;
                continue;
            }
            ulong covered = Math.Min(end, EntryEnd(e));
            Emit(va, (covered - va) >> _shift, dump: !usable, ref h);
            va = covered;
        }
    }

    /// <summary>
    /// The content tracker's path: reads the pages (frozen, so what is digested is what is
    /// written), then, per run of kernel pages, leaves unchanged ones to the parent and puts
    /// changed ones into the pipe from what was already read. A streamed pipe (dump) takes its
    /// pages by splice, and the digests are taken from the spliced pages themselves, so every
    /// page is read once and digested once: the collector's digests also make up the VMA
    /// checksums (<see cref="ChecksumsIncludeWrittenPages"/>), and the page store need not digest.
    /// Where the kernel's splice would copy (the real host), a dump's written pages are instead
    /// fetched by the page store's workers (<see cref="FetchesPages"/>), which digest them as
    /// they compress them: pages that have no parent to compare with are not read here at all
    /// (their digests are filled in from the store's, <see cref="FetchedDigestsPending"/>), and
    /// changed pages are read a second time rather than held in a copy while frozen.
    /// </summary>
    private void CollectByContent(ulong va, ulong nr, bool allowParent, ref VmaHash h)
    {
        int ps = 1 << _shift;
        bool compare = allowParent && _parentDigests is not null;
        if (_fetch && !compare)
        {
            // Every page is written: nothing to decide here. Placeholders keep the digest map in
            // address order; the store's digests replace them.
            ReserveFetched(va, nr);
            ulong imgPages = nr * (ulong)_imgPerPage;
            for (ulong i = 0; i < imgPages;)
            {
                int n = (int)Math.Min(imgPages - i, (ulong)NoDigests.Length);
                Digests!.AddRange(va + (i << PageGeometry.PageShift), NoDigests.AsSpan(0, n));
                i += (ulong)n;
            }
            FetchedDigestsPending = true;
            return;
        }
        bool stage = _pipe.Streamed && !_fetch && _k.Capabilities.SpliceCopies && compare;
        bool splice = _pipe.Streamed && !_fetch && !stage;
        int chunk = ChunkBytes / ps;
        int imgChunk = chunk * _imgPerPage;
        if (splice)
        {
            _spliced ??= new nint[imgChunk];
            _chunkDigests ??= new ulong[imgChunk];
            for (ulong done = 0; done < nr;)
            {
                int n = (int)Math.Min(nr - done, (ulong)chunk);
                ulong a = va + (done << _shift);
                Splice(a, _spliced.AsSpan(0, n * _imgPerPage), n);
                DigestSpliced(a, _spliced.AsSpan(0, n * _imgPerPage), _chunkDigests);
                ConsumeChunk(a, n, default, _chunkDigests, compare, splice: true, stage: false, ref h);
                done += (ulong)n;
            }
            return;
        }
        // Reading and digesting run on every core (process_vm_readv on the real host): helpers
        // keep two chunks per core in flight, and this thread takes the finished chunks in
        // address order while the next ones are read, so no core waits for the others at a
        // round's end. A simulated kernel is read by this thread only.
        int lanes = _k.Capabilities.ConcurrentReads && nr > (ulong)chunk ? Math.Max(1, Environment.ProcessorCount) : 1;
        if (lanes > 1)
        {
            chunk = ParallelChunkBytes / ps;
            imgChunk = chunk * _imgPerPage;
        }
        // No more slots than the span has chunks: a small VMA takes one or two.
        int ring = lanes > 1 ? (int)Math.Min((ulong)(2 * lanes), (nr + (ulong)chunk - 1) / (ulong)chunk) : 1;
        _chunks ??= [];
        if (_chunks.Count > 0 && _chunks[0].Digests.Length < imgChunk)
            _chunks.Clear();
        while (_chunks.Count < ring)
            _chunks.Add(Chunk.Rent(Math.Max(imgChunk << PageGeometry.PageShift, ChunkBytes), Math.Max(imgChunk, ChunkBytes >> PageGeometry.PageShift)));
        try
        {
            ulong next = 0;
            int started = 0;
            Chunk Start(int i)
            {
                var c = _chunks[i % ring];
                c.Pages = (int)Math.Min(nr - next, (ulong)chunk);
                c.Va = va + (next << _shift);
                next += (ulong)c.Pages;
                if (lanes > 1)
                    c.Pending = Task.Run(() => FillChunk(c));
                return c;
            }
            while (started < ring && next < nr)
                Start(started++);
            for (int i = 0; i < started; i++)
            {
                var c = _chunks[i % ring];
                if (lanes > 1)
                    c.Wait();
                else
                    FillChunk(c);
                ConsumeChunk(c.Va, c.Pages, c.Bytes.AsSpan(0, c.Pages * ps), c.Digests, compare, splice: false, stage, ref h);
                // The chunk is consumed (copied into the pipe where needed): its slot reads on.
                if (next < nr)
                    Start(started++);
            }
        }
        finally
        {
            // A failed chunk leaves no read running into a buffer the next span reuses.
            foreach (var c in _chunks)
                c.WaitQuietly();
            Chunk.Return(_chunks);
            _chunks.Clear();
        }
    }

    /// <summary>Placeholder digests (0) for pages the page store fetches and digests itself.</summary>
    private static readonly ulong[] NoDigests = new ulong[4096];

    private const int ChunkBytes = 1 << 20;
    /// <summary>Chunks read on several cores are larger, so the threads meet less often.</summary>
    private const int ParallelChunkBytes = 4 << 20;
    /// <summary>
    /// Reads and digests this much at a time: one process_vm_readv per 1 MiB costs less than per
    /// 128 KiB (per call the kernel looks up the task and its mm and checks ptrace access), and
    /// the digest still finds the piece in the last-level cache. Read and digested on two
    /// threads, 1 GiB took 130-135 ms in 128 KiB pieces and 97-115 ms in 1 MiB ones
    /// (bench host-profile rd128k-2threads, rd1m-2threads).
    /// </summary>
    private const int PieceBytes = 1 << 20;

    /// <summary>A chunk of pages read and digested ahead of the thread that decides about them (a slot of the ring of chunks in flight).</summary>
    private sealed class Chunk(int bytes, int imgPages)
    {
        /// <summary>
        /// Chunks of earlier dumps in this process: a fresh 4 MiB buffer costs a page fault and
        /// a zeroed page for each 4 KiB the read fills, about as much as the read itself.
        /// </summary>
        private static readonly System.Collections.Concurrent.ConcurrentBag<Chunk> Spare = [];
        /// <summary>As many as a ring of two chunks per core holds.</summary>
        private static readonly int MaxSpare = 2 * Math.Max(1, Environment.ProcessorCount);

        /// <summary>Page-aligned: the kernel's copy into an unaligned buffer is far slower (<see cref="PageAlignedBuffer"/>).</summary>
        public readonly ArraySegment<byte> Bytes = PageAlignedBuffer.Allocate(bytes);
        public readonly ulong[] Digests = new ulong[imgPages];

        public static Chunk Rent(int bytes, int imgPages)
        {
            for (int tries = Spare.Count; tries > 0 && Spare.TryTake(out var c); tries--)
            {
                if (c.Bytes.Count >= bytes && c.Digests.Length >= imgPages)
                    return c;
                // Sized for another page size: let it go.
            }
            return new Chunk(bytes, imgPages);
        }

        public static void Return(List<Chunk> chunks)
        {
            foreach (var c in chunks)
                if (c.Pending is null && Spare.Count < MaxSpare)
                    Spare.Add(c);
        }
        public ulong Va;
        public int Pages;
        public Task? Pending;

        public void Wait()
        {
            var t = Pending;
            Pending = null;
            t?.GetAwaiter().GetResult();
        }

        public void WaitQuietly()
        {
            try { Pending?.Wait(); }
            catch (AggregateException) { }
            Pending = null;
        }
    }

    /// <summary>Reads a chunk's pages and digests each 4 KiB image page (on any thread when the kernel allows concurrent reads).</summary>
    private void FillChunk(Chunk c)
    {
        int ps = 1 << _shift;
        int total = c.Pages * ps;
        for (int off = 0; off < total; off += PieceBytes)
        {
            int len = Math.Min(PieceBytes, total - off);
            var piece = c.Bytes.AsSpan(off, len);
            ulong a = c.Va + (ulong)off;
            Read(a, piece);
            for (int p = 0; p < len; p += PageGeometry.PageSize)
                c.Digests[(off + p) >> PageGeometry.PageShift] = PageDigest.Of(a + (ulong)p, piece.Slice(p, PageGeometry.PageSize));
        }
    }

    private static unsafe void DigestSpliced(ulong va, ReadOnlySpan<nint> refs, ulong[] digests)
    {
        for (int i = 0; i < refs.Length; i++)
            digests[i] = PageDigest.Of(va + ((ulong)i << PageGeometry.PageShift), new ReadOnlySpan<byte>((void*)refs[i], PageGeometry.PageSize));
    }

    /// <summary>
    /// Decides about one chunk of <paramref name="n"/> kernel pages at <paramref name="a"/> whose
    /// image pages' digests are <paramref name="digests"/>: records them, leaves runs that match
    /// the parent as holes, and puts the others into the pipe.
    /// </summary>
    private void ConsumeChunk(ulong a, int n, ReadOnlySpan<byte> bytes, ulong[] digests, bool compare, bool splice, bool stage, ref VmaHash h)
    {
        int ps = 1 << _shift;
        int runStart = 0;
        bool runSame = false;
        ulong runSum = 0, sum = 0;
        // The chunk's digests go in as one run, and the parent's are looked up once for the whole
        // chunk where one run of the parent holds them (per page, this thread's bookkeeping took
        // 15-27 ms of a 1 GiB pre-dump, beside two cores reading).
        Digests!.AddRange(a, digests.AsSpan(0, n * _imgPerPage));
        var parent = compare ? _parentDigests!.Run(a, n * _imgPerPage) : default;
        for (int i = 0; i <= n; i++)
        {
            bool same = false;
            if (i < n)
            {
                same = compare;
                sum = 0;
                for (int k = 0; k < _imgPerPage; k++)
                {
                    int img = i * _imgPerPage + k;
                    ulong d = digests[img];
                    sum += d;
                    if (same && (parent.IsEmpty
                            ? !_parentDigests!.TryGet(a + ((ulong)img << PageGeometry.PageShift), out ulong pd) || pd != d
                            : parent[img] != d))
                        same = false;
                }
            }
            if (i > runStart && (i == n || same != runSame))
            {
                ulong ra = a + ((ulong)runStart << _shift);
                int rn = i - runStart;
                if (runSame && ParentCovers(ra, (ulong)rn))
                {
                    _pipe.AddHole(ra, (ulong)rn * (ulong)_imgPerPage);
                    h.Value += runSum;
                }
                else if (_fetch)
                {
                    // The store reads these pages again and digests them for the checksums.
                    ReserveFetched(ra, (ulong)rn);
                    FetchedDigestsPending = true;
                }
                else if (splice)
                {
                    MoveRefsIntoPipe(ra, _spliced.AsSpan(runStart * _imgPerPage, rn * _imgPerPage));
                    h.Value += runSum;
                }
                else if (stage)
                {
                    StageIntoPipe(ra, bytes.Slice(runStart * ps, rn * ps));
                    h.Value += runSum;
                }
                else
                {
                    CopyIntoPipe(ra, bytes.Slice(runStart * ps, rn * ps));
                    h.Value += runSum;
                }
                runStart = i;
                runSum = 0;
            }
            if (i == runStart)
                runSame = same;
            runSum += sum;
        }
    }

    /// <summary>Puts <paramref name="nr"/> kernel pages at <paramref name="va"/> into a streamed pipe for the page store to fetch.</summary>
    private void ReserveFetched(ulong va, ulong nr)
    {
        ulong bytes = nr << _shift;
        for (ulong off = 0; off < bytes;)
        {
            int n = (int)Math.Min(bytes - off, (ulong)PagePipe.MaxReserve);
            _pipe.ReserveFetched(va + off, n);
            CollectedBytes += n;
            off += (ulong)n;
        }
    }

    /// <summary>
    /// True when the checksums already hold the digests of the pages put into the pipe (the
    /// content tracker of a streamed dump digests them); the page store then need not digest.
    /// </summary>
    public static bool ChecksumsIncludeWrittenPages(bool content, bool streamed) => content && streamed;

    private static unsafe void AddSplicedDigests(ulong va, ReadOnlySpan<nint> refs, ref VmaHash h)
    {
        for (int i = 0; i < refs.Length; i++)
            h.Value += PageDigest.Of(va + ((ulong)i << PageGeometry.PageShift), new ReadOnlySpan<byte>((void*)refs[i], PageGeometry.PageSize));
    }

    private void StageIntoPipe(ulong va, ReadOnlySpan<byte> src)
    {
        for (int off = 0; off < src.Length;)
        {
            int n = Math.Min(src.Length - off, PagePipe.MaxReserve);
            _frozen!.StageCopy(src.Slice(off, n), _pipe.ReserveRefs(va + (ulong)off, n));
            CollectedBytes += n;
            off += n;
        }
    }

    private void MoveRefsIntoPipe(ulong va, ReadOnlySpan<nint> refs)
    {
        int per = PagePipe.MaxReserve >> PageGeometry.PageShift;
        for (int off = 0; off < refs.Length;)
        {
            int n = Math.Min(refs.Length - off, per);
            refs.Slice(off, n).CopyTo(_pipe.ReserveRefs(va + ((ulong)off << PageGeometry.PageShift), n << PageGeometry.PageShift));
            CollectedBytes += (long)n << PageGeometry.PageShift;
            off += n;
        }
    }

    private void CopyIntoPipe(ulong va, ReadOnlySpan<byte> src)
    {
        for (int off = 0; off < src.Length;)
        {
            int n = Math.Min(src.Length - off, PagePipe.MaxReserve);
            src.Slice(off, n).CopyTo(_pipe.Reserve(va + (ulong)off, n));
            CollectedBytes += n;
            off += n;
        }
    }

    /// <summary>True when usable (present or parent) entries of the parent pagemap cover [va, va + nr pages).</summary>
    private bool ParentCovers(ulong va, ulong nr)
    {
        var entries = _parent!.Entries;
        ulong end = va + (nr << _shift);
        while (va < end)
        {
            int idx = _parent.FirstEntryEndingAfter(va);
            if (idx < 0 || idx >= entries.Count)
                return false;
            var e = entries[idx];
            if (e.Vaddr > va || (PagemapImage.FlagsOf(e) & (PagemapFlags.Present | PagemapFlags.Parent)) == 0)
                return false;
            va = EntryEnd(e);
        }
        return true;
    }

    private static ulong EntryEnd(ImageFormat.Images.pagemap_entry e) => e.Vaddr + (PagemapImage.NrPages(e) << PageGeometry.PageShift);

    private void Emit(ulong va, ulong nr, bool dump, ref VmaHash h)
    {
        if (nr == 0)
            return;
        int ps = 1 << _shift;
        if (!dump)
        {
            _pipe.AddHole(va, nr * (ulong)_imgPerPage);
            if (_hash)
            {
                _scratch ??= GC.AllocateUninitializedArray<byte>(1 << 20);
                ulong done = 0;
                while (done < nr)
                {
                    int n = (int)Math.Min(nr - done, (ulong)(_scratch.Length / ps));
                    var span = _scratch.AsSpan(0, n * ps);
                    ulong a = va + (done << _shift);
                    Read(a, span);
                    h.AddPages(a, span);
                    done += (ulong)n;
                }
            }
            return;
        }
        int maxPages = PagePipe.MaxReserve / ps;
        ulong off = 0;
        while (off < nr)
        {
            int n = (int)Math.Min(nr - off, (ulong)maxPages);
            ulong a = va + (off << _shift);
            if (_fetch)
            {
                // The page store reads them from the frozen task and digests them for the checksum.
                _pipe.ReserveFetched(a, n * ps);
            }
            else if (_pipe.Streamed)
            {
                // vmsplice: the pipe takes references to the frozen task's frames. The page store
                // digests the dumped pages for the VMA checksum as it compresses them.
                var refs = _pipe.ReserveRefs(a, n * ps);
                Splice(a, refs, n);
                // With the content tracker the page store does not digest (it would repeat the
                // collector's work); pages spliced outside the content path ([vdso]) are digested here.
                if (_content && _hash)
                    AddSplicedDigests(a, refs, ref h);
            }
            else
            {
                // A kept pipe (pre-dump) copies: the tree runs on before these bytes are written.
                // In read mode the copy waits for the thaw.
                var span = _pipe.Reserve(a, n * ps);
                if (ReadMode && !_hash)
                    DeferredBytes += n * ps;
                else
                {
                    Read(a, span);
                    if (_hash)
                        h.AddPages(a, span);
                }
            }
            CollectedBytes += (long)n * ps;
            off += (ulong)n;
        }
    }

    /// <summary>Fills <paramref name="refs"/> (one per 4 KiB image page) with the frames of <paramref name="pages"/> task pages from <paramref name="va"/>.</summary>
    private void Splice(ulong va, Span<nint> refs, int pages)
    {
        Span<nint> frames = _imgPerPage == 1 ? refs : (_frames ??= new nint[PagePipe.MaxReserve >> 12]).AsSpan(0, pages);
        var r = _frozen is null ? SysResult.Fail(Errno.EPERM) : _k.SplicePages(_frozen, _pid, va, frames);
        if (!r.Ok)
            throw new DumperException($"cannot splice task memory ({r.Error})", _pid, null, va, va + ((ulong)pages << _shift),
                inner: new KernelException(r.Error, "vmsplice"));
        if (_imgPerPage != 1)
            for (int i = 0; i < pages; i++)
                for (int k = 0; k < _imgPerPage; k++)
                    refs[i * _imgPerPage + k] = frames[i] + ((nint)k << 12);
    }

    private void Read(ulong va, Span<byte> dst)
    {
        var r = _k.ReadMemory(_pid, va, dst);
        if (!r.Ok)
            throw new DumperException($"cannot read task memory ({r.Error})", _pid, null, va, va + (ulong)dst.Length,
                inner: new KernelException(r.Error, "process_vm_readv"));
    }
}

/// <summary>
/// Checksum of a VMA's contents: the wrapping sum of the <see cref="PageDigest"/> of each 4 KiB
/// page, so pages may be digested in any order and on any thread (the page store digests the
/// dumped ones while compressing them) and all-zero pages contribute nothing.
/// </summary>
internal struct VmaHash
{
    public ulong Value;

    public void AddPages(ulong va, ReadOnlySpan<byte> pages)
    {
        for (int off = 0; off < pages.Length; off += PageGeometry.PageSize)
            Value += PageDigest.Of(va + (ulong)off, pages.Slice(off, PageGeometry.PageSize));
    }
}

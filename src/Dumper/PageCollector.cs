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
    private byte[]? _scratch;
    private byte[]? _scratch2;
    private nint[]? _frames;
    private nint[]? _spliced;

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
            spans.Clear();
            _walker.Walk(_pid, v, spans);
            bool allowParent = _parent is not null && !v.IsHugetlb && !(ParentSkippedUnreadable && unreadable);
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
        if (_hash)
            Checksums.Add((v.Start, v.End, h.Value));
    }

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
    /// Where the kernel's splice copies (the real host) and a parent may hold most pages, the
    /// pages are read into a scratch buffer instead and only the changed runs are staged, so the
    /// freeze does not hold a copy of pages the parent already has.
    /// </summary>
    private unsafe void CollectByContent(ulong va, ulong nr, bool allowParent, ref VmaHash h)
    {
        int ps = 1 << _shift;
        bool stage = _pipe.Streamed && _k.Capabilities.SpliceCopies && allowParent && _parentDigests is not null;
        bool splice = _pipe.Streamed && !stage;
        _scratch ??= GC.AllocateUninitializedArray<byte>(1 << 20);
        int chunk = Math.Max(1, _scratch.Length / ps);
        int imgChunk = chunk * _imgPerPage;
        if (splice)
            _spliced ??= new nint[imgChunk];
        // Reading and digesting overlap: while this thread digests one chunk, the next is read
        // (process_vm_readv on the real host) into the other buffer. Only the reader calls the
        // kernel while a read is in flight.
        bool prefetch = !splice && nr > (ulong)chunk;
        if (prefetch)
            _scratch2 ??= GC.AllocateUninitializedArray<byte>(_scratch.Length);
        byte[] cur = _scratch, other = _scratch2 ?? _scratch;
        Task? pending = null;
        try
        {
            for (ulong done = 0; done < nr;)
            {
                int n = (int)Math.Min(nr - done, (ulong)chunk);
                ulong a = va + (done << _shift);
                var bytes = cur.AsSpan(0, n * ps);
                if (splice)
                    Splice(a, _spliced.AsSpan(0, n * _imgPerPage), n);
                else if (pending is not null)
                    pending.GetAwaiter().GetResult();
                else
                    Read(a, bytes);
                pending = null;
                if (prefetch && done + (ulong)n < nr)
                {
                    int n2 = (int)Math.Min(nr - done - (ulong)n, (ulong)chunk);
                    ulong a2 = a + ((ulong)n << _shift);
                    var buf = other;
                    pending = Task.Run(() => Read(a2, buf.AsSpan(0, n2 * ps)));
                }
                int runStart = 0;
                bool runSame = false;
                ulong runSum = 0, sum = 0;
                for (int i = 0; i <= n; i++)
                {
                    bool same = false;
                    if (i < n)
                    {
                        same = allowParent && _parentDigests is not null;
                        sum = 0;
                        for (int k = 0; k < _imgPerPage; k++)
                        {
                            int img = i * _imgPerPage + k;
                            ulong pva = a + ((ulong)img << PageGeometry.PageShift);
                            var page = splice
                                ? new ReadOnlySpan<byte>((void*)_spliced![img], PageGeometry.PageSize)
                                : bytes.Slice(img << PageGeometry.PageShift, PageGeometry.PageSize);
                            ulong d = PageDigest.Of(pva, page);
                            Digests!.Add(pva, d);
                            sum += d;
                            if (same && (!_parentDigests!.TryGet(pva, out ulong pd) || pd != d))
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
                            if (_hash)
                                h.Value += runSum;
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
                            CopyIntoPipe(ra, bytes.Slice(runStart * ps, rn * ps), ref h);
                        runStart = i;
                        runSum = 0;
                    }
                    if (i == runStart)
                        runSame = same;
                    runSum += sum;
                }
                done += (ulong)n;
                (cur, other) = (other, cur);
            }
        }
        finally
        {
            // A failed chunk leaves no read running into a buffer the next span reuses.
            try { pending?.Wait(); }
            catch (AggregateException) { }
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

    private void CopyIntoPipe(ulong va, ReadOnlySpan<byte> src, ref VmaHash h)
    {
        for (int off = 0; off < src.Length;)
        {
            int n = Math.Min(src.Length - off, PagePipe.MaxReserve);
            src.Slice(off, n).CopyTo(_pipe.Reserve(va + (ulong)off, n));
            if (_hash)
                h.AddPages(va + (ulong)off, src.Slice(off, n));
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
            if (_pipe.Streamed)
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

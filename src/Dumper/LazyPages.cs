using CriuSharp.Dumper.Proc;
using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>
/// The pages a lazy dump (<c>dump --lazy-pages</c>) keeps on the source instead of writing them: CRIU
/// leaves them in the dump's page pipes and its page server answers the destination's PS_IOV_GET
/// requests from there (criu/page-xfer.c, criu/uffd.c). Pages are 4 KiB image pages by address,
/// per process.
/// <code>
///  dump: lazy VMA page ──▶ store[pid][va] = bytes      pagemap: PE_LAZY entry, nothing in pages-N.img
///  GET(pid, va, n) ──▶ the n pages, or "none" (nr_pages 0) when any is not held
///  Lose() ──▶ the source is gone: every later GET fails
/// </code>
/// </summary>
public sealed class LazyPageStore
{
    private readonly Dictionary<int, SortedDictionary<ulong, byte[]>> _pages = [];
    private readonly object _gate = new();

    /// <summary>Pages held (all processes).</summary>
    public long Pages
    {
        get
        {
            lock (_gate)
                return _pages.Values.Sum(p => (long)p.Count);
        }
    }

    /// <summary>The source died (or its page server stopped): nothing more can be fetched.</summary>
    public bool Lost { get; private set; }

    /// <summary>Pages answered by GET so far.</summary>
    public long PagesServed { get; private set; }

    public void Add(int pid, ulong va, ReadOnlySpan<byte> pages)
    {
        lock (_gate)
        {
            if (!_pages.TryGetValue(pid, out var mine))
                _pages[pid] = mine = [];
            for (int off = 0; off < pages.Length; off += PageGeometry.PageSize)
                mine[va + (ulong)off] = pages.Slice(off, PageGeometry.PageSize).ToArray();
        }
    }

    /// <summary>PS_IOV_GET: copies the pages of [va, va + dest.Length) of <paramref name="pid"/>; false when the source is lost or any page is not held.</summary>
    public bool TryGet(int pid, ulong va, Span<byte> dest)
    {
        lock (_gate)
        {
            if (Lost || !_pages.TryGetValue(pid, out var mine))
                return false;
            for (int off = 0; off < dest.Length; off += PageGeometry.PageSize)
                if (!mine.ContainsKey(va + (ulong)off))
                    return false;
            for (int off = 0; off < dest.Length; off += PageGeometry.PageSize)
                mine[va + (ulong)off].CopyTo(dest.Slice(off, PageGeometry.PageSize));
            PagesServed += dest.Length / PageGeometry.PageSize;
            return true;
        }
    }

    /// <summary>The held page addresses of one process, ascending.</summary>
    public IReadOnlyList<ulong> Addresses(int pid)
    {
        lock (_gate)
            return _pages.TryGetValue(pid, out var mine) ? mine.Keys.ToList() : [];
    }

    /// <summary>The source is gone (killed, or its page server closed): every later GET fails.</summary>
    public void Lose()
    {
        lock (_gate)
        {
            Lost = true;
            _pages.Clear();
        }
    }
}

/// <summary>
/// The page sink of a lazy dump: pages of VMAs that can be restored lazily (<see cref="CanBeLazy"/>)
/// go into a <see cref="LazyPageStore"/> and into the pagemap as PE_LAZY entries without bytes
/// (CRIU's ppb_xfer_flags: PE_LAZY alone when lazy pages are not transferred); every other page is
/// written as usual. Digests are still reported, so the VMA checksums cover the lazy pages.
/// </summary>
internal sealed class LazyPageSink(LocalPageSink inner, int pid, IReadOnlyList<VmaInfo> vmas, LazyPageStore store) : IPageSink
{
    public Action<ulong, ulong>? OnPageDigest { get; set; }

    /// <summary>
    /// CRIU's vma_entry_can_be_lazy (criu/include/vma.h): MAP_ANONYMOUS and MAP_PRIVATE, not
    /// MAP_LOCKED, not the vDSO or vsyscall area — so MAP_SHARED anonymous memory (shmem, SysV)
    /// and file mappings are never lazy, in CRIU as here. Two more exclusions, neither of which
    /// changes what CRIU would make lazy in practice: [vvar] (never dumped: its pages are the
    /// kernel's) and hugetlb (a missing-mode UFFDIO_COPY into a hugetlb VMA must cover whole huge
    /// pages, and both criu/uffd.c and our daemon place base pages, so such a restore could not
    /// finish). CRIU also keeps each thread's current stack page eager (is_stack in criu/mem.c); a
    /// simulated thread's registers hold its workload program's state, not a stack pointer into its
    /// memory, so that rule has no page to keep.
    /// </summary>
    public static bool CanBeLazy(VmaInfo v) =>
        v.IsAnonPrivate && (v.MapFlags & VmaMapFlags.Locked) == 0 && !v.IsVdso && !v.IsVsyscall && !v.IsVvar && !v.IsHugetlb;

    private bool Lazy(ulong va)
    {
        foreach (var v in vmas)
            if (v.Start <= va && va < v.End)
                return CanBeLazy(v);
        return false;
    }

    public void AddPresent(ulong vaddr, ReadOnlySpan<byte> pages)
    {
        int n = pages.Length / PageGeometry.PageSize;
        int run = 0;
        for (int i = 0; i <= n; i++)
        {
            bool boundary = i == n || (i > run && Lazy(vaddr + ((ulong)i << PageGeometry.PageShift)) != Lazy(vaddr + ((ulong)run << PageGeometry.PageShift)));
            if (!boundary)
                continue;
            ulong at = vaddr + ((ulong)run << PageGeometry.PageShift);
            var part = pages.Slice(run * PageGeometry.PageSize, (i - run) * PageGeometry.PageSize);
            if (Lazy(at))
            {
                store.Add(pid, at, part);
                Digest(at, part);
                inner.Writer.AddLazy(at, (ulong)(i - run));
            }
            else
            {
                inner.OnPageDigest = OnPageDigest;
                inner.AddPresent(at, part);
            }
            run = i;
        }
    }

    public unsafe void AddPresentByReference(ulong vaddr, ReadOnlySpan<nint> pageAddresses)
    {
        // The frozen task's frames are read here, while the freeze holds (the store keeps copies,
        // as the dump's pipes keep the pages after the tree is gone).
        var buf = new byte[pageAddresses.Length * PageGeometry.PageSize];
        for (int i = 0; i < pageAddresses.Length; i++)
            new ReadOnlySpan<byte>((byte*)pageAddresses[i], PageGeometry.PageSize).CopyTo(buf.AsSpan(i * PageGeometry.PageSize));
        AddPresent(vaddr, buf);
    }

    /// <summary>The pages are read here, while the freeze holds, for the same reason.</summary>
    public void AddPresentByFetch(ulong vaddr, int nrPages, PageFetch fetch)
    {
        var buf = new byte[nrPages * PageGeometry.PageSize];
        fetch(vaddr, buf);
        AddPresent(vaddr, buf);
    }

    private void Digest(ulong va, ReadOnlySpan<byte> pages)
    {
        if (OnPageDigest is not { } report)
            return;
        for (int off = 0; off < pages.Length; off += PageGeometry.PageSize)
        {
            ulong at = va + (ulong)off;
            ulong d = PageDigest.Of(at, pages.Slice(off, PageGeometry.PageSize));
            if (d != 0)
                report(at, d);
        }
    }

    public void AddParentHole(ulong vaddr, ulong nrPages) => inner.AddParentHole(vaddr, nrPages);
    public PageWriteStats Finish() => inner.Finish();
    public void Dispose() => inner.Dispose();
}

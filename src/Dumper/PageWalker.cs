using System.Buffers;
using CriuSharp.Dumper.Proc;

namespace CriuSharp.Dumper;

/// <summary>What the kernel says about a run of populated pages.</summary>
[Flags]
internal enum PageBits : byte
{
    None = 0,
    /// <summary>Written since the tracker was last reset (soft-dirty, or uffd-wp WRITTEN), or no tracker.</summary>
    Dirty = 1,
    /// <summary>A page-cache (or shmem) page, not an anonymous copy.</summary>
    File = 2,
    Swapped = 4,
}

/// <summary>A run of consecutive populated pages with equal <see cref="PageBits"/>, in kernel pages.</summary>
internal readonly record struct PageSpan(ulong Va, ulong NrPages, PageBits Bits);

/// <summary>Where the dirty bit comes from.</summary>
internal enum DirtySource { SoftDirty, Written, Always }

/// <summary>
/// Finds the populated pages of one VMA the way CRIU's generate_iovs does, through either
/// interface the kernel offers:
/// <code>
///  pagemap (8 bytes/page)            PAGEMAP_SCAN (one ioctl, runs of equal categories)
///  ┌──────┬──────┬──────┬──────┐     ┌───────────────┬─────────┬───────────┐
///  │P  sd │P  0pf│  -   │S  sd │     │PRESENT|SD 0x1000-0x3000 │SWAPPED ...│
///  └──────┴──────┴──────┴──────┘     └───────────────┴─────────┴───────────┘
///   dump    zero-PFN: skip  hole        PFNZERO, GUARD and empty pages never reported
/// </code>
/// Spans are appended to a reused list; no allocation per page.
/// </summary>
internal sealed class PageWalker : IDisposable
{
    private const int PagemapBatch = 4096;
    private const int ScanVec = 512;
    private readonly IKernel _k;
    private readonly bool _useScan;
    private readonly DirtySource _dirty;
    private readonly PagemapLayout _layout;
    private readonly ulong _zeroPfn;
    private readonly ulong[] _pm;
    private readonly PageRegion[] _vec;
    private readonly int _shift;

    public PageWalker(IKernel kernel, bool useScan, DirtySource dirty)
    {
        _k = kernel;
        _useScan = useScan && kernel.Capabilities.PagemapScan;
        _dirty = dirty;
        _shift = kernel.Capabilities.PageShift;
        // The 2013 series keeps soft-dirty out of /proc/PID/pagemap and shows it in pagemap2.
        _layout = kernel.Capabilities.HasPagemap2 ? PagemapLayout.Pagemap2 : kernel.Capabilities.PagemapLayout;
        _pm = ArrayPool<ulong>.Shared.Rent(PagemapBatch);
        _vec = ArrayPool<PageRegion>.Shared.Rent(ScanVec);
        _zeroPfn = _useScan ? ulong.MaxValue : Kerndat.ZeroPfn(kernel);
    }

    public bool UsesScan => _useScan;

    public void Walk(int pid, VmaInfo vma, List<PageSpan> spans)
    {
        int parts = Parts(vma);
        if (parts > 1)
        {
            WalkInParts(pid, vma, spans, parts);
            return;
        }
        WalkOne(pid, vma, spans);
    }

    private void WalkOne(int pid, VmaInfo vma, List<PageSpan> spans)
    {
        if (_useScan)
            WalkScan(pid, vma, spans);
        else
            WalkPagemap(pid, vma, spans);
    }

    /// <summary>A VMA of base pages at least this large is walked on every core (<see cref="WalkInParts"/>).</summary>
    private const ulong PartsFrom = 256UL << 20;

    private int Parts(VmaInfo vma) =>
        _k.Capabilities.ConcurrentReads && Environment.ProcessorCount > 1 && !vma.IsHugetlb && vma.Length >= PartsFrom
            ? Environment.ProcessorCount : 1;

    /// <summary>
    /// The kernel's walk of a large VMA (PAGEMAP_SCAN or pagemap: 12-17 ms for 1 GiB of populated
    /// pages, in the kernel's page-table walk) split into one part per core, each walked by its
    /// own walker on a kernel that may be read from several threads; the parts' spans are joined
    /// in address order, runs that meet at a part's edge merged, so the spans are those one walk
    /// gives.
    /// </summary>
    /// <param name="concurrently">False (tests on a simulated kernel, which is read by one thread): the parts are walked one after the other here.</param>
    internal void WalkInParts(int pid, VmaInfo vma, List<PageSpan> spans, int parts, bool concurrently = true)
    {
        ulong pages = vma.Length >> _shift;
        var found = new List<PageSpan>[parts];
        var cuts = new ulong[parts + 1];
        for (int i = 0; i <= parts; i++)
            cuts[i] = vma.Start + ((pages * (ulong)i / (ulong)parts) << _shift);
        Task[] helpers = new Task[parts - 1];
        for (int i = 1; i < parts; i++)
        {
            int part = i;
            found[part] = [];
            void WalkPart()
            {
                using var w = new PageWalker(_k, _useScan, _dirty);
                w.WalkOne(pid, vma with { Start = cuts[part], End = cuts[part + 1] }, found[part]);
            }
            if (concurrently)
                helpers[part - 1] = Task.Run(WalkPart);
            else
            {
                WalkPart();
                helpers[part - 1] = Task.CompletedTask;
            }
        }
        found[0] = [];
        try
        {
            WalkOne(pid, vma with { Start = cuts[0], End = cuts[1] }, found[0]);
        }
        finally
        {
            // No helper is left reading (or throwing into nobody) once this returns.
            try
            {
                Task.WaitAll(helpers);
            }
            catch (AggregateException) when (helpers.Any(h => h.IsFaulted))
            {
                // Rethrown below with the first part's own error, if it had one, taking precedence.
            }
        }
        foreach (var h in helpers)
            if (h.IsFaulted)
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(h.Exception!.InnerException!).Throw();
        foreach (var part in found)
            foreach (var sp in part)
                Append(spans, sp.Va, sp.NrPages, sp.Bits, _shift);
    }

    private static void Append(List<PageSpan> spans, ulong va, ulong nr, PageBits bits, int shift)
    {
        if (spans.Count > 0)
        {
            var last = spans[^1];
            if (last.Bits == bits && last.Va + (last.NrPages << shift) == va)
            {
                spans[^1] = last with { NrPages = last.NrPages + nr };
                return;
            }
        }
        spans.Add(new PageSpan(va, nr, bits));
    }

    private void WalkPagemap(int pid, VmaInfo vma, List<PageSpan> spans)
    {
        // hugetlb has no zero page: a "file" page there is a hugetlbfs page, dumped as content.
        bool anon = !vma.IsFile && !vma.IsShmem && !vma.IsHugetlb;
        bool modern = _layout == PagemapLayout.Modern;
        ulong ps = 1UL << _shift;
        for (ulong va = vma.Start; va < vma.End;)
        {
            int n = (int)Math.Min(PagemapBatch, (vma.End - va) >> _shift);
            var pm = _pm.AsSpan(0, n);
            _k.ReadPagemap(pid, va, pm, _layout);
            for (int i = 0; i < n; i++)
            {
                ulong e = pm[i];
                bool present = (e & PagemapBits.Present) != 0;
                bool swapped = (e & PagemapBits.Swap) != 0;
                if (!present && !swapped)
                    continue;
                if (present && PagemapBits.Pfn(e) == _zeroPfn)
                    continue;
                if (modern && (e & PagemapBits.Guard) != 0)
                    continue;
                if (swapped && IsMarker(e))
                    continue;
                bool file = (e & PagemapBits.File) != 0;
                // A "file" page in an anonymous VMA is the huge zero page (it is not anon memory).
                if (file && anon && present)
                    continue;
                var bits = (file ? PageBits.File : 0) | (swapped ? PageBits.Swapped : 0);
                if (_dirty == DirtySource.Always || (_dirty == DirtySource.SoftDirty && (e & PagemapBits.SoftDirty) != 0)
                    || (_dirty == DirtySource.Written && (e & PagemapBits.UffdWp) == 0))
                    bits |= PageBits.Dirty;
                Append(spans, va + ((ulong)i << _shift), 1, bits, _shift);
            }
            va += (ulong)n * ps;
        }
    }

    /// <summary>A pte marker (uffd-wp on an empty entry, or a guard) reads as a swap entry of the marker type: no data behind it.</summary>
    private static bool IsMarker(ulong e) => PagemapBits.SwapType(e) == 31;

    private void WalkScan(int pid, VmaInfo vma, List<PageSpan> spans)
    {
        const ulong ret = PageCategory.Present | PageCategory.Swapped | PageCategory.PfnZero | PageCategory.File
                          | PageCategory.SoftDirty | PageCategory.Written | PageCategory.Guard;
        ulong start = vma.Start;
        // hugetlb has no zero page: a "file" page there is a hugetlbfs page, dumped as content.
        bool anon = !vma.IsFile && !vma.IsShmem && !vma.IsHugetlb;
        while (start < vma.End)
        {
            var arg = PmScanArg.Create(start, vma.End, ScanVec, 0, ret, anyof: PageCategory.Present | PageCategory.Swapped);
            var r = _k.PagemapScan(pid, ref arg, _vec.AsSpan(0, ScanVec));
            if (!r.Ok)
                // The errno rides along: ESRCH (the task exited mid-dump) is told apart from other failures.
                throw new DumperException($"PAGEMAP_SCAN failed ({r.Error})", pid, null, start, vma.End,
                    inner: new KernelException(r.Error, "PAGEMAP_SCAN"));
            for (int i = 0; i < (int)r.Value; i++)
            {
                var g = _vec[i];
                ulong c = g.Categories;
                if ((c & (PageCategory.PfnZero | PageCategory.Guard)) != 0)
                    continue;
                bool file = (c & PageCategory.File) != 0;
                bool swapped = (c & PageCategory.Swapped) != 0;
                if (file && anon && !swapped)
                    continue;
                bool dirty = _dirty switch
                {
                    DirtySource.SoftDirty => (c & PageCategory.SoftDirty) != 0,
                    DirtySource.Written => (c & PageCategory.Written) != 0,
                    _ => true,
                };
                var bits = (file ? PageBits.File : 0) | (swapped ? PageBits.Swapped : 0) | (dirty ? PageBits.Dirty : 0);
                ulong nr = (g.End - g.Start) >> _shift;
                if (swapped && !dirty)
                    AppendSwappedFiltered(pid, g.Start, nr, bits, spans);
                else
                    Append(spans, g.Start, nr, bits, _shift);
            }
            if (arg.WalkEnd <= start)
                break;
            start = arg.WalkEnd;
        }
    }

    /// <summary>
    /// Under uffd-wp, an empty entry that was write-protected (WP_UNPOPULATED) is a pte marker and
    /// reads as "swapped, not written"; only pagemap tells it from a real swap entry.
    /// </summary>
    private void AppendSwappedFiltered(int pid, ulong va, ulong nr, PageBits bits, List<PageSpan> spans)
    {
        while (nr > 0)
        {
            int n = (int)Math.Min(nr, PagemapBatch);
            var pm = _pm.AsSpan(0, n);
            _k.ReadPagemap(pid, va, pm, PagemapLayout.Modern);
            for (int i = 0; i < n; i++)
                if (!IsMarker(pm[i]))
                    Append(spans, va + ((ulong)i << _shift), 1, bits, _shift);
            va += (ulong)n << _shift;
            nr -= (ulong)n;
        }
    }

    public void Dispose()
    {
        ArrayPool<ulong>.Shared.Return(_pm);
        ArrayPool<PageRegion>.Shared.Return(_vec);
    }
}

using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Uffd;

namespace CriuSharp.SimKernel.Mm;

/// <summary>
/// An address space (mm_struct): the sorted VMA list, the page tables, and the counters that
/// /proc/PID/status and stat report. Operations that change it live in the partial files
/// MmOps (mmap family), MmFault (faults and accesses) and MmFork.
/// </summary>
public sealed partial class MmStruct
{
    private readonly Kernel _k;
    private readonly List<VmArea> _vmas = [];
    private readonly ArchProfile _arch;
    private readonly PhysicalMemory _mem;
    // The store path's masks, read from the architecture once: they are used on every simulated store.
    private readonly ulong _writeOk, _accessedDirty, _pfnMask, _offsetMask;
    private readonly int _pfnShift;


    internal MmStruct(Kernel kernel)
    {
        _k = kernel;
        _arch = kernel.Arch;
        _mem = kernel.Memory;
        _writeOk = _arch.ProtNoneClear | _arch.Write;
        _accessedDirty = _arch.Accessed | _arch.Dirty;
        _pfnMask = _arch.PfnMask;
        _pfnShift = _arch.PfnShift;
        _offsetMask = (ulong)_arch.PageSize - 1;
        Pt = new PageTables(_arch);
        MmapBase = (_arch.TaskSize - 0x10_0000_0000UL) & ~(_arch.HugePageSize - 1);
    }

    public Kernel Kernel => _k;
    internal PageTables Pt { get; }
    public IReadOnlyList<VmArea> Vmas => _vmas;
    public bool Dead { get; internal set; }

    // Layout fields CRIU reads from /proc/PID/stat into MmEntry.
    public ulong StartCode { get; internal set; }
    public ulong EndCode { get; internal set; }
    public ulong StartData { get; internal set; }
    public ulong EndData { get; internal set; }
    public ulong StartBrk { get; internal set; }
    public ulong Brk { get; internal set; }
    public ulong StartStack { get; internal set; }
    public ulong ArgStart { get; internal set; }
    public ulong ArgEnd { get; internal set; }
    public ulong EnvStart { get; internal set; }
    public ulong EnvEnd { get; internal set; }
    public ulong MmapBase { get; }
    public SimFile? ExeFile { get; internal set; }

    // Counters (in pages).
    public long RssAnon { get; internal set; }
    public long RssFile { get; internal set; }
    public long RssShmem { get; internal set; }
    public long Rss => RssAnon + RssFile + RssShmem;
    public long HiwaterRss { get; internal set; }
    public long SwapEntries { get; internal set; }
    public long MinorFaults { get; internal set; }
    public long MajorFaults { get; internal set; }
    /// <summary>Write faults caused by write-protection (clear_refs 4 or uffd-wp): the tracking cost.</summary>
    public long WpFaults { get; internal set; }
    /// <summary>Set once the process pinned pages (FOLL_PIN); makes clear_refs skip maybe-pinned pages (C2).</summary>
    public bool HasPinned { get; internal set; }
    internal HashSet<long> PinnedPfns { get; } = [];
    /// <summary>Set by a fault that must raise SIGBUS rather than SIGSEGV (hugetlb pool exhausted); read and cleared by the task.</summary>
    internal bool PendingSigbus { get; set; }
    /// <summary>The thread whose access is being served, so faults count to it as well as to the mm; null for ptrace-style access.</summary>
    internal SimTask? Current;

    public ulong TotalVm => _vmas.Aggregate(0UL, (s, v) => s + v.Length) >> _arch.PageShift;

    internal bool SoftDirtyEnabled => _k.SoftDirtySupported;
    internal VmaFlags NewVmaSoftDirty => _k.SoftDirtySupported && _k.Version.HasVmSoftDirty ? VmaFlags.SoftDirty : VmaFlags.None;

    // ---- VMA lookup ----------------------------------------------------------------------

    /// <summary>Index of the VMA containing <paramref name="va"/>, or -1.</summary>
    public int FindIndex(ulong va)
    {
        int lo = 0, hi = _vmas.Count - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            var v = _vmas[mid];
            if (va < v.Start) hi = mid - 1;
            else if (va >= v.End) lo = mid + 1;
            else return mid;
        }
        return -1;
    }

    public VmArea? Find(ulong va)
    {
        int i = FindIndex(va);
        return i < 0 ? null : _vmas[i];
    }

    /// <summary>Index of the first VMA that ends above <paramref name="va"/> (Count when none).</summary>
    internal int FirstEndingAbove(ulong va)
    {
        int lo = 0, hi = _vmas.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_vmas[mid].End <= va) lo = mid + 1; else hi = mid;
        }
        return lo;
    }

    internal bool RangeFullyMapped(ulong start, ulong end)
    {
        ulong at = start;
        for (int i = FirstEndingAbove(start); i < _vmas.Count && at < end; i++)
        {
            if (_vmas[i].Start > at)
                return false;
            at = _vmas[i].End;
        }
        return at >= end;
    }

    internal bool RangeFree(ulong start, ulong end)
    {
        int i = FirstEndingAbove(start);
        return i == _vmas.Count || _vmas[i].Start >= end;
    }

    internal void Insert(VmArea v)
    {
        int i = FirstEndingAbove(v.Start);
        _vmas.Insert(i, v);
    }

    // ---- split and merge -----------------------------------------------------------------

    /// <summary>Ensures a VMA boundary at <paramref name="addr"/> (splitting a huge page that straddles it).</summary>
    internal void SplitAt(ulong addr)
    {
        int i = FindIndex(addr);
        if (i < 0 || _vmas[i].Start == addr)
            return;
        var lo = _vmas[i];
        if ((addr & (_arch.HugePageSize - 1)) != 0)
            SplitHugeAt(addr);
        var hi = lo.Clone();
        hi.Start = addr;
        if (lo.File is not null)
            hi.PgOff = lo.PgOff + (long)((addr - lo.Start) >> _arch.PageShift);
        lo.End = addr;
        _vmas.Insert(i + 1, hi);
    }

    private bool CanMerge(VmArea a, VmArea b) =>
        a.End == b.Start
        && (a.Flags & VmaSpecial) == 0
        && ((a.Flags ^ b.Flags) & ~VmaFlags.SoftDirty) == 0
        && ReferenceEquals(a.File, b.File)
        && (a.File is null || b.PgOff == a.PgOff + (long)(a.Length >> _arch.PageShift))
        && a.SpecialName is null && b.SpecialName is null
        && ReferenceEquals(a.Uffd, b.Uffd)
        && (a.AnonVmaId == 0 || b.AnonVmaId == 0 || a.AnonVmaId == b.AnonVmaId);

    /// <summary>VM_SPECIAL (include/linux/mm.h): such VMAs never merge (hugetlb VMAs carry VM_DONTEXPAND).</summary>
    private const VmaFlags VmaSpecial = VmaFlags.Io | VmaFlags.DontExpand | VmaFlags.PfnMap;

    /// <summary>How a VMA came to be merged: it decides whose flags survive on pre-6.19 kernels.</summary>
    internal enum MergeKind
    {
        /// <summary>A new range (mmap, mremap, brk) merges into an existing neighbour, which is expanded and keeps its flags.</summary>
        NewRange,
        /// <summary>An existing range was changed (mprotect, madvise, uffd registration); the result gets the changed range's flags.</summary>
        ModifiedRange,
    }

    /// <summary>
    /// Merges the VMA at <paramref name="idx"/> with compatible neighbours. VM_SOFTDIRTY is ignored
    /// when deciding. On the result it is sticky (either side's flag survives) on 6.19/6.18.y; older
    /// kernels keep one side's flags (see <see cref="MergeKind"/>), which can lose it (FN1).
    /// Returns the index of the resulting VMA.
    /// </summary>
    internal int MergeAround(int idx, MergeKind kind = MergeKind.NewRange)
    {
        var cur = _vmas[idx];
        if (idx > 0 && CanMerge(_vmas[idx - 1], cur))
        {
            MergePair(idx - 1, kind == MergeKind.NewRange ? _vmas[idx - 1].Flags : cur.Flags);
            idx--;
        }
        if (idx + 1 < _vmas.Count && CanMerge(_vmas[idx], _vmas[idx + 1]))
        {
            // When cur already merged left, the expanded left VMA survives; otherwise next is expanded.
            VmaFlags keep = kind == MergeKind.ModifiedRange ? cur.Flags
                : ReferenceEquals(_vmas[idx], cur) ? _vmas[idx + 1].Flags : _vmas[idx].Flags;
            MergePair(idx, keep);
        }
        return idx;
    }

    private void MergePair(int lowIdx, VmaFlags survivorFlags)
    {
        var lo = _vmas[lowIdx];
        var hi = _vmas[lowIdx + 1];
        VmaFlags flags = _k.Version.StickySoftDirtyMerge
            ? lo.Flags | (hi.Flags & VmaFlags.SoftDirty)
            : survivorFlags;
        lo.End = hi.End;
        lo.Flags = flags;
        if (lo.AnonVmaId == 0)
            lo.AnonVmaId = hi.AnonVmaId;
        _vmas.RemoveAt(lowIdx + 1);
    }

    // ---- installing and removing entries -------------------------------------------------

    private void CountIn(long pfn, VmArea vma, long pages)
    {
        switch (_mem.Kind(pfn))
        {
            case PhysicalMemory.FrameKind.Anon: RssAnon += pages; break;
            case PhysicalMemory.FrameKind.PageCache:
                if (vma.IsShmem) RssShmem += pages; else RssFile += pages;
                break;
            default: return;
        }
        if (Rss > HiwaterRss)
            HiwaterRss = Rss;
    }

    private void CountOut(long pfn, VmArea vma, long pages)
    {
        switch (_mem.Kind(pfn))
        {
            case PhysicalMemory.FrameKind.Anon: RssAnon -= pages; break;
            case PhysicalMemory.FrameKind.PageCache:
                if (vma.IsShmem) RssShmem -= pages; else RssFile -= pages;
                break;
        }
    }

    /// <summary>Maps <paramref name="pfn"/> with entry <paramref name="e"/>, counting the mapping and RSS.</summary>
    internal void InstallPage(PteTable t, int i, ulong e, long pfn, VmArea vma)
    {
        if (_mem.Kind(pfn) != PhysicalMemory.FrameKind.Zero)
        {
            _mem.Map(pfn);
            CountIn(pfn, vma, 1);
            if (vma.AnonVmaId == 0 && _mem.Kind(pfn) == PhysicalMemory.FrameKind.Anon)
                vma.AnonVmaId = _k.NextAnonVmaId();
        }
        Pt.Set(t, i, e);
    }

    /// <summary>Removes one entry, releasing its frame or swap slot. Guard markers stay unless asked.</summary>
    internal void ZapEntry(PteTable t, int i, VmArea vma, bool removeGuards)
    {
        ulong e = t.E[i];
        if (e == 0)
            return;
        if (_arch.IsPresent(e))
        {
            long pfn = _arch.Pfn(e);
            if (_mem.Kind(pfn) != PhysicalMemory.FrameKind.Zero)
            {
                CountOut(pfn, vma, 1);
                _mem.Unmap(pfn);
            }
        }
        else if (_arch.IsMarker(e))
        {
            if (!removeGuards && (_arch.SwapOffset(e) & ArchProfile.MarkerGuard) != 0)
                return;
        }
        else
        {
            _k.Swap.Release(_arch.SwapOffset(e));
            SwapEntries--;
        }
        Pt.Set(t, i, 0);
    }

    internal void ZapHuge(PmdTable pmd, int slot, VmArea vma)
    {
        ulong e = pmd.Huge[slot];
        long head = _arch.Pfn(e);
        if (_mem.Kind(head) != PhysicalMemory.FrameKind.Zero)
        {
            CountOut(head, vma, _arch.PagesPerHuge);
            for (long p = head; p < head + _arch.PagesPerHuge; p++)
                _mem.Unmap(p);
        }
        pmd.Huge[slot] = 0;
    }

    /// <summary>Removes all entries in [start, end) of one VMA; huge pages partly covered are split first.</summary>
    internal void ZapRange(VmArea vma, ulong start, ulong end, bool removeGuards)
    {
        if (vma.IsHugetlb)
        {
            ZapHugetlbRange(vma, start, end);
            return;
        }
        ulong hsz = _arch.HugePageSize;
        foreach (var (baseVa, pmd, slot) in Pt.Slots(start, end).ToList())
        {
            if (pmd.Huge[slot] != 0)
            {
                if (start <= baseVa && baseVa + hsz <= end)
                {
                    ZapHuge(pmd, slot, vma);
                    continue;
                }
                SplitHuge(pmd, slot);
            }
            var t = pmd.Pte[slot];
            if (t is null || t.Used == 0)
                continue;
            ulong s = Math.Max(start, baseVa), e = Math.Min(end, baseVa + hsz);
            for (ulong va = s; va < e; va += (ulong)_arch.PageSize)
                ZapEntry(t, Pt.PteIndex(va), vma, removeGuards);
        }
    }

    /// <summary>Drops empty page tables in [start, end) (munmap frees page tables, DONTNEED does not).</summary>
    internal void FreePageTables(ulong start, ulong end)
    {
        ulong hsz = _arch.HugePageSize;
        foreach (var (baseVa, pmd, slot) in Pt.Slots(start, end).ToList())
        {
            // free_pgtables bounds the freeing by the neighbouring VMAs (floor/ceiling), not by the
            // unmapped range: a table whose whole PMD range no VMA covers any more is freed, so a
            // later fault there sees pmd_none and may map a THP or the huge zero page.
            if (pmd.Pte[slot] is { Used: 0 } && RangeFree(baseVa, baseVa + hsz))
                pmd.SetTable(slot, null);
        }
    }

    /// <summary>
    /// Splits a PMD-mapped huge page into a page table (K4). Each PTE keeps the PMD's soft-dirty bit;
    /// a PMD that is hardware-dirty makes its PTEs dirty, and "make dirty" also sets soft-dirty (FP2).
    /// </summary>
    internal void SplitHuge(PmdTable pmd, int slot)
    {
        ulong h = pmd.Huge[slot];
        if (h == 0)
            return;
        long head = _arch.Pfn(h);
        bool zero = _mem.Kind(head) == PhysicalMemory.FrameKind.Zero;
        var t = new PteTable(_arch.PtrsPerTable);
        bool writable = _arch.IsWritable(h);
        bool dirty = (h & _arch.Dirty) != 0;
        bool sd = (h & _arch.SoftDirty) != 0;
        bool wp = (h & _arch.UffdWp) != 0 && _arch.UffdWp != 0;
        bool protNone = _arch.IsProtNone(h);
        for (int i = 0; i < _arch.PtrsPerTable; i++)
        {
            long pfn = zero ? _mem.ZeroPfn : head + i;
            ulong e = _arch.MakePresent(pfn, writable && !zero, dirty && !zero);
            if (sd) e |= _arch.SoftDirty;
            if (wp) e |= _arch.UffdWp;
            if (protNone) e = _arch.MkProtNone(e);
            Pt.Set(t, i, e);
        }
        pmd.SetTable(slot, t);
        pmd.Huge[slot] = 0;
    }

    internal void SplitHugeAt(ulong va)
    {
        var pmd = Pt.PmdTableFor(va);
        if (pmd is not null && pmd.Huge[Pt.PmdIndex(va)] != 0)
            SplitHuge(pmd, Pt.PmdIndex(va));
    }

    internal static Userfaultfd? UffdFor(VmArea vma) => vma.UffdWpRegistered ? vma.Uffd : null;
}

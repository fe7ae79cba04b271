using System.Numerics;
using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Proc;

/// <summary>
/// The PAGEMAP_SCAN ioctl (Documentation/admin-guide/mm/pagemap.rst, fs/proc/task_mmu.c). Pages are categorised, filtered by the four masks, merged into
/// runs of equal output categories, limited by vec_len and max_pages, and optionally
/// write-protected for uffd-wp. Queries that can only match entries recorded in a page table's
/// soft-dirty or uffd-wp bitmap walk those bitmaps, so their cost follows the written ranges.
/// </summary>
public static class PagemapScan
{
    private ref struct Reporter
    {
        public Span<PageRegion> Vec;
        public ulong VecLen;
        public ulong MaxPages;
        public int Count;
        public ulong Pages;
        public bool HaveCur;
        public PageRegion Cur;
        public bool Stopped;
        /// <summary>The walk stopped because the vector or max_pages ran out (the kernel's -ENOSPC), not for a hugetlb back-out.</summary>
        public bool NoSpace;
        public ulong WalkEnd;

        /// <summary>Reports up to <paramref name="pages"/> pages at <paramref name="va"/>; returns how many were taken.</summary>
        public ulong Add(ulong va, ulong pages, ulong cats, int pageShift)
        {
            if (Stopped)
                return 0;
            if (MaxPages != 0 && Pages >= MaxPages)
            {
                Stop(va);
                NoSpace = true;
                return 0;
            }
            ulong take = MaxPages != 0 ? Math.Min(pages, MaxPages - Pages) : pages;
            if (HaveCur && Cur.End == va && Cur.Categories == cats)
                Cur.End += take << pageShift;
            else
            {
                if (VecLen != 0 && (ulong)Count + (HaveCur ? 1UL : 0) >= VecLen)
                {
                    Stop(va);
                    NoSpace = true;
                    return 0;
                }
                Flush();
                Cur = new PageRegion(va, va + (take << pageShift), cats);
                HaveCur = true;
            }
            Pages += take;
            if (take < pages)
            {
                Stop(va + (take << pageShift));
                NoSpace = true;
            }
            return take;
        }

        /// <summary>
        /// pagemap_scan_backout_range: takes back the last <paramref name="pages"/> pages reported
        /// from <paramref name="va"/> (a hugetlb page that cannot be write-protected in part).
        /// </summary>
        public void Backout(ulong va, ulong pages)
        {
            if (!HaveCur)
                return;
            if (Cur.Start == va)
                HaveCur = false;
            else
                Cur.End = va;
            Pages -= pages;
        }

        public void Stop(ulong va)
        {
            Stopped = true;
            WalkEnd = va;
        }

        public void Flush()
        {
            // With vec_len 0 nothing is copied out and the call returns 0.
            if (HaveCur && VecLen != 0)
                Vec[Count++] = Cur;
            HaveCur = false;
        }
    }

    /// <summary>
    /// PAGEMAP_SCAN with the result vector handed over as a span (how a tracer that owns the buffer,
    /// like the dumper, calls it). <c>arg.Vec</c> only says whether a vector is given; a span shorter
    /// than <c>VecLen</c> stands for a user buffer that copy_to_user cannot fill (EFAULT).
    /// </summary>
    public static SysResult Scan(SimTask task, ref PmScanArg arg, Span<PageRegion> vec)
    {
        var k = task.Kernel;
        if (!k.Version.HasPagemapScan)
            return Errno.ENOTTY;
        var err = GetArgs(k.Arch, ref arg);
        if (err != 0)
            return err;
        if (arg.VecLen > (ulong)vec.Length)
            return Errno.EFAULT;
        return Batched(task, ref arg, vec, caller: null);
    }

    /// <summary>
    /// ioctl(pagemap_fd, PAGEMAP_SCAN, uarg) issued by <paramref name="caller"/>: the argument block
    /// and the result vector are addresses in the caller's memory, copied as copy_from_user and
    /// copy_to_user would (fs/proc/task_mmu.c do_pagemap_scan). An unmapped or unreadable argument,
    /// or a vector that cannot be written, gives EFAULT; pages write-protected by the batches walked
    /// before a failing copy stay protected, as on Linux.
    /// </summary>
    public static SysResult ScanUser(SimTask target, SimTask caller, ulong uarg)
    {
        var k = target.Kernel;
        if (!k.Version.HasPagemapScan)
            return Errno.ENOTTY;
        Span<byte> raw = stackalloc byte[(int)PageCategory.ArgSize];
        if (!CopyFromUser(caller, uarg, raw))
            return Errno.EFAULT;
        var arg = PmScanArg.Decode(raw);
        var err = GetArgs(k.Arch, ref arg);
        if (err != 0)
            return err;
        var ret = Batched(target, ref arg, [], caller);
        Span<byte> we = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(we, arg.WalkEnd);
        if (!CopyToUser(caller, uarg + PmScanArg.WalkEndOffset, we))
            return Errno.EFAULT;
        return ret;
    }

    /// <summary>
    /// do_pagemap_scan's loop: the walk fills a bounce buffer of min(PMD_SIZE / PAGE_SIZE, vec_len)
    /// regions; each time it is full the regions are flushed out and the walk resumes where it
    /// stopped, until the range, the vector or max_pages is exhausted. walk_end is only ever set
    /// by a walk that stopped early, so when a later batch completes the range it still reads as
    /// the last stop (a 6.18 host scanning 2000 alternating pages into a 4000-entry vector returns
    /// 2000 regions and walk_end at page 1536); with no early stop it reads as the end.
    /// </summary>
    private static SysResult Batched(SimTask target, ref PmScanArg arg, Span<PageRegion> managed, SimTask? caller)
    {
        var arch = target.Kernel.Arch;
        ulong end = arg.End;
        ulong maxPages = arg.MaxPages == 0 ? ulong.MaxValue : arg.MaxPages;
        ulong vecLeft = arg.VecLen, vecOut = arg.Vec, found = 0;
        int bounce = (int)Math.Min((ulong)(arch.HugePageSize >> arch.PageShift), Math.Max(vecLeft, 1));
        var buf = caller is null ? null : new PageRegion[bounce];
        long ranges = 0;
        ulong walkStart = arg.Start, walkEnd = 0;
        SysResult ret = SysResult.Success(0);
        while (walkStart < end)
        {
            var a = arg;
            a.Start = walkStart;
            a.VecLen = Math.Min((ulong)bounce, vecLeft);
            a.MaxPages = maxPages == ulong.MaxValue ? 0 : maxPages - found;
            var into = buf is null ? managed[(int)ranges..] : buf;
            ret = Walk(target, ref a, into, out ulong pages, out int n, out bool noSpace);
            found += pages;
            bool stoppedEarly = ret.Ok && a.WalkEnd < end;
            if (stoppedEarly)
                walkEnd = a.WalkEnd;
            if (n > 0)
            {
                if (buf is not null && !CopyRegionsToUser(caller!, vecOut, buf.AsSpan(0, n)))
                {
                    ret = Errno.EFAULT;
                    break;
                }
                vecOut += (ulong)n * RegionSize;
                vecLeft -= (ulong)n;
                ranges += n;
            }
            if (!stoppedEarly || !noSpace || vecLeft == 0 || found == maxPages)
                break;
            walkStart = a.WalkEnd;
        }
        arg.WalkEnd = walkEnd == 0 ? end : walkEnd;
        return ret.Ok ? SysResult.Success(ranges) : ret;
    }

    /// <summary>sizeof(struct page_region): start, end, categories.</summary>
    public const ulong RegionSize = 24;

    /// <summary>
    /// pagemap_scan_get_args (fs/proc/task_mmu.c), in its order: size, flags, category masks, start
    /// alignment, access_ok of the range, a length without a vector, access_ok of the vector; then
    /// the end is rounded up to a page. Returns 0 or the errno.
    /// </summary>
    internal static Errno GetArgs(ArchProfile arch, ref PmScanArg arg)
    {
        if (arg.Size != PageCategory.ArgSize)
            return Errno.EINVAL;
        if ((arg.Flags & ~(PageCategory.ScanWpMatching | PageCategory.ScanCheckWpAsync)) != 0)
            return Errno.EINVAL;
        if (((arg.CategoryInverted | arg.CategoryMask | arg.CategoryAnyofMask | arg.ReturnMask) & ~PageCategory.All) != 0)
            return Errno.EINVAL;
        ulong ps = (ulong)arch.PageSize;
        if ((arg.Start & (ps - 1)) != 0)
            return Errno.EINVAL;
        if (!AccessOk(arch, arg.Start, arg.End - arg.Start))
            return Errno.EFAULT;
        if (arg.Vec == 0 && arg.VecLen != 0)
            return Errno.EINVAL;
        if (arg.Vec != 0 && (arg.VecLen > ulong.MaxValue / RegionSize || !AccessOk(arch, arg.Vec, arg.VecLen * RegionSize)))
            return Errno.EFAULT;
        arg.End = (arg.End + ps - 1) & arch.PageMask;
        arg.WalkEnd = 0;
        return 0;
    }

    /// <summary>
    /// access_ok(): the range lies below the highest user address and does not wrap (x86_64
    /// valid_user_address with USER_PTR_MAX = TASK_SIZE_MAX, arch/x86/include/asm/uaccess_64.h).
    /// It says nothing about what is mapped there; that is for the copy itself to find out.
    /// </summary>
    internal static bool AccessOk(ArchProfile arch, ulong addr, ulong size)
    {
        ulong sum = addr + size;
        return sum >= addr && sum <= arch.TaskSize;
    }

    private static bool CopyFromUser(SimTask caller, ulong va, Span<byte> dst)
    {
        if (!caller.Alive || !AccessOk(caller.Kernel.Arch, va, (ulong)dst.Length))
            return false;
        var r = caller.Mm.Access(va, dst, write: false, force: false, out _);
        return r.Ok && r.Value == dst.Length;
    }

    private static bool CopyToUser(SimTask caller, ulong va, Span<byte> src)
    {
        if (!caller.Alive || !AccessOk(caller.Kernel.Arch, va, (ulong)src.Length))
            return false;
        var r = caller.Mm.Access(va, src, write: true, force: false, out _);
        return r.Ok && r.Value == src.Length;
    }

    private static bool CopyRegionsToUser(SimTask caller, ulong va, ReadOnlySpan<PageRegion> regions)
    {
        var bytes = new byte[regions.Length * (int)RegionSize];
        for (int i = 0; i < regions.Length; i++)
        {
            var d = bytes.AsSpan(i * (int)RegionSize);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(d, regions[i].Start);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(d[8..], regions[i].End);
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(d[16..], regions[i].Categories);
        }
        return CopyToUser(caller, va, bytes);
    }

    /// <summary>The walk over validated arguments; <paramref name="pages"/> counts the pages reported.</summary>
    private static SysResult Walk(SimTask task, ref PmScanArg arg, Span<PageRegion> vec, out ulong pages, out int regions,
                                  out bool noSpace)
    {
        pages = 0;
        regions = 0;
        noSpace = false;
        var k = task.Kernel;
        ulong end = arg.End;
        if (arg.Start == end)
        {
            arg.WalkEnd = arg.Start;
            return SysResult.Success(0);
        }
        var mm = task.Mm;
        bool wp = (arg.Flags & PageCategory.ScanWpMatching) != 0;
        bool checkAsync = (arg.Flags & PageCategory.ScanCheckWpAsync) != 0;
        bool armAll = wp && arg.VecLen == 0;
        // Without an output vector nothing is counted against max_pages (pagemap_scan_output
        // returns at once when there is no bounce buffer), so the walk covers the whole range.
        ulong maxPages = arg.VecLen == 0 || arg.MaxPages == ulong.MaxValue ? 0 : arg.MaxPages;
        var rep = new Reporter { Vec = vec, VecLen = arg.VecLen, MaxPages = maxPages };
        var q = new Query(arg);

        var vmas = mm.Vmas;
        for (int vi = mm.FirstEndingAbove(arg.Start); vi < vmas.Count && vmas[vi].Start < end && !rep.Stopped; vi++)
        {
            var v = vmas[vi];
            if ((v.Flags & VmaFlags.PfnMap) != 0)
                continue;
            ulong vmaWide = VmaCategories(k, v);
            if ((q.Mask & PageCategory.WpAllowed) != 0 && ((vmaWide ^ q.Inverted) & PageCategory.WpAllowed) == 0)
                continue;
            if ((wp || checkAsync) && (vmaWide & PageCategory.WpAllowed) == 0)
            {
                if (checkAsync)
                {
                    // test_walk fails the walk; what was found so far is still flushed to the
                    // caller, and walk_end, never set by an early stop, reads as the end.
                    rep.Flush();
                    pages = rep.Pages;
                    regions = rep.Count;
                    arg.WalkEnd = end;
                    return Errno.EPERM;
                }
                continue;
            }
            ulong s = Math.Max(v.Start, arg.Start), e = Math.Min(v.End, end);
            if (v.IsHugetlb)
                ScanHugetlb(mm, v, s, e, vmaWide, q, ref rep, wp, armAll);
            else
                ScanVma(mm, v, s, e, vmaWide, q, ref rep, wp, armAll);
        }
        rep.Flush();
        pages = rep.Pages;
        regions = rep.Count;
        noSpace = rep.NoSpace;
        arg.WalkEnd = rep.Stopped ? rep.WalkEnd : end;
        return SysResult.Success(rep.Count);
    }

    private readonly struct Query(PmScanArg a)
    {
        public readonly ulong Inverted = a.CategoryInverted;
        public readonly ulong Mask = a.CategoryMask;
        public readonly ulong Anyof = a.CategoryAnyofMask;
        public readonly ulong Return = a.ReturnMask;

        public bool Matches(ulong cats)
        {
            ulong c = cats ^ Inverted;
            return (c & Mask) == Mask && (Anyof == 0 || (c & Anyof) != 0);
        }

        /// <summary>Only entries without uffd-wp state can match (they are the complement of the bitmap).</summary>
        public bool WrittenOnly => (Mask & PageCategory.Written) != 0 && (Inverted & PageCategory.Written) == 0;
        /// <summary>Only entries carrying soft-dirty themselves can match (when the VMA is not VM_SOFTDIRTY).</summary>
        public bool SoftDirtyOnly => (Mask & PageCategory.SoftDirty) != 0 && (Inverted & PageCategory.SoftDirty) == 0;
    }

    private static ulong VmaCategories(Kernel k, VmArea v)
    {
        ulong c = 0;
        if (v.UffdWpRegistered && v.Uffd!.Async)
            c |= PageCategory.WpAllowed;
        if (k.SoftDirtySupported && v.SoftDirtyFlag)
            c |= PageCategory.SoftDirty;
        return c;
    }

    /// <summary>Categories of one page-level entry (pagemap_page_category() in fs/proc/task_mmu.c).</summary>
    internal static ulong EntryCategories(ArchProfile arch, PhysicalMemory mem, bool sdSupported, ulong e, ulong vmaWide)
    {
        if (e == 0)
            return vmaWide | PageCategory.Written; // an empty entry inside an existing page table
        if (arch.IsPresent(e))
        {
            long pfn = arch.Pfn(e);
            var kind = mem.Kind(pfn);
            ulong c = vmaWide | PageCategory.Present;
            if (arch.UffdWp == 0 || (e & arch.UffdWp) == 0) c |= PageCategory.Written;
            if (kind == PhysicalMemory.FrameKind.Zero) c |= PageCategory.PfnZero;
            else if (kind != PhysicalMemory.FrameKind.Anon) c |= PageCategory.File;
            if (sdSupported && (e & arch.SoftDirty) != 0) c |= PageCategory.SoftDirty;
            return c;
        }
        if (arch.IsMarker(e))
        {
            ulong m = arch.SwapOffset(e);
            ulong c = vmaWide | PageCategory.Swapped;
            if ((m & ArchProfile.MarkerUffdWp) == 0) c |= PageCategory.Written;
            if ((m & ArchProfile.MarkerGuard) != 0) c |= PageCategory.Guard;
            return c;
        }
        ulong sc = vmaWide | PageCategory.Swapped;
        if (arch.SwpUffdWp == 0 || (e & arch.SwpUffdWp) == 0) sc |= PageCategory.Written;
        if (sdSupported && (e & arch.SwpSoftDirty) != 0) sc |= PageCategory.SoftDirty;
        return sc;
    }

    private static void ScanVma(MmStruct mm, VmArea v, ulong start, ulong end, ulong vmaWide, in Query q,
                                ref Reporter rep, bool wp, bool armAll)
    {
        var k = mm.Kernel;
        var arch = k.Arch;
        var mem = k.Memory;
        bool sd = k.SoftDirtySupported;
        int shift = arch.PageShift;
        ulong hsz = arch.HugePageSize;
        bool registered = (vmaWide & PageCategory.WpAllowed) != 0;
        bool viaWritten = !armAll && q.WrittenOnly;
        bool viaSoftDirty = !armAll && !viaWritten && q.SoftDirtyOnly && (vmaWide & PageCategory.SoftDirty) == 0;

        for (ulong pmdBase = start & ~(hsz - 1); pmdBase < end && !rep.Stopped; pmdBase += hsz)
        {
            ulong s = Math.Max(start, pmdBase), e = Math.Min(end, pmdBase + hsz);
            var pmd = mm.Pt.PmdTableFor(s);
            int slot = mm.Pt.PmdIndex(s);
            if (pmd is not null && pmd.Huge[slot] is var h && h != 0)
            {
                ScanHuge(mm, v, pmd, slot, pmdBase, s, e, vmaWide, q, ref rep, wp);
                continue;
            }
            var t = pmd?.Pte[slot];
            if (t is null)
            {
                // A PMD with no page table: in a registered VMA it reads written, otherwise only
                // the VMA-wide categories apply.
                ulong cats = registered ? vmaWide | PageCategory.Written : vmaWide;
                if (!q.Matches(cats) && !armAll)
                    continue;
                if (armAll)
                {
                    for (ulong va = s; va < e; va += (ulong)arch.PageSize)
                        mm.ProtectEntry(va, true, markEmpty: v.Uffd!.WpUnpopulated);
                    continue;
                }
                ulong got = rep.Add(s, (e - s) >> shift, cats & q.Return, shift);
                if (wp && (cats & PageCategory.Written) != 0)
                    for (ulong i = 0; i < got; i++)
                        mm.ProtectEntry(s + (i << shift), true, markEmpty: v.Uffd!.WpUnpopulated);
                continue;
            }
            int from = mm.Pt.PteIndex(s);
            int to = from + (int)((e - s) >> shift);
            if (armAll)
            {
                for (int i = from; i < to; i++)
                    if (!arch.HasUffdWpState(t.E[i]))
                        mm.ProtectEntry(pmdBase + ((ulong)i << shift), true, markEmpty: v.Uffd!.WpUnpopulated);
                continue;
            }
            if (viaWritten || viaSoftDirty)
            {
                var bitmap = viaWritten ? t.UffdWp : t.SoftDirty;
                for (int w = from >> 6; w <= (to - 1) >> 6 && !rep.Stopped; w++)
                {
                    ulong bits = viaWritten ? ~bitmap[w] : bitmap[w];
                    int lo = w << 6;
                    if (lo < from) bits &= ulong.MaxValue << (from - lo);
                    if (lo + 64 > to) bits &= (to - lo) >= 64 ? ulong.MaxValue : (1UL << (to - lo)) - 1;
                    while (bits != 0 && !rep.Stopped)
                    {
                        int i = lo + BitOperations.TrailingZeroCount(bits);
                        bits &= bits - 1;
                        ReportEntry(mm, v, t, i, pmdBase, vmaWide, q, ref rep, wp, arch, mem, sd, shift);
                    }
                }
                continue;
            }
            for (int i = from; i < to && !rep.Stopped; i++)
                ReportEntry(mm, v, t, i, pmdBase, vmaWide, q, ref rep, wp, arch, mem, sd, shift);
        }
    }

    private static void ReportEntry(MmStruct mm, VmArea v, PteTable t, int i, ulong pmdBase, ulong vmaWide, in Query q,
                                    ref Reporter rep, bool wp, ArchProfile arch, PhysicalMemory mem, bool sd, int shift)
    {
        ulong x = t.E[i];
        ulong cats = EntryCategories(arch, mem, sd, x, vmaWide);
        if (!q.Matches(cats))
            return;
        ulong va = pmdBase + ((ulong)i << shift);
        if (rep.Add(va, 1, cats & q.Return, shift) == 1 && wp && (cats & PageCategory.Written) != 0
            && (cats & PageCategory.Guard) == 0)
            mm.ProtectEntry(va, true, markEmpty: v.Uffd!.WpUnpopulated);
    }

    /// <summary>pagemap_hugetlb_category: a hugetlb entry is always PAGE_IS_HUGE; an empty one is nothing else.</summary>
    internal static ulong HugetlbCategories(MmStruct mm, VmArea v, ulong hugeBase, ulong h, ulong vmaWide)
    {
        var arch = mm.Kernel.Arch;
        ulong c = vmaWide | PageCategory.Huge;
        if (h == 0)
            return c;
        if (arch.IsPresent(h))
        {
            c |= PageCategory.Present;
            if (arch.UffdWp == 0 || (h & arch.UffdWp) == 0) c |= PageCategory.Written;
            if (mm.HugetlbIsFilePage(v, hugeBase, arch.Pfn(h))) c |= PageCategory.File;
            // x86's huge_pte_mkdirty sets _PAGE_SOFT_DIRTY, and clear_refs never walks hugetlb, so
            // the bit reported here stays set once the page was made writable.
            if (mm.Kernel.SoftDirtySupported && (h & arch.SoftDirty) != 0) c |= PageCategory.SoftDirty;
            return c;
        }
        // A uffd-wp marker: swapped, not written.
        return c | PageCategory.Swapped;
    }

    /// <summary>
    /// pagemap_scan_hugetlb_entry, one huge page at a time over [start, end). Write-protecting a
    /// written page needs the whole page in range: otherwise the pages just reported are taken back
    /// and walk_end is left at the page's start (partial hugetlb write-protection is impossible).
    /// </summary>
    private static void ScanHugetlb(MmStruct mm, VmArea v, ulong start, ulong end, ulong vmaWide, in Query q,
                                    ref Reporter rep, bool wp, bool armAll)
    {
        var arch = mm.Kernel.Arch;
        int shift = arch.PageShift;
        ulong hsz = v.File!.Hugetlb!.Size;
        for (ulong hb = start & ~(hsz - 1); hb < end && !rep.Stopped; hb += hsz)
        {
            ulong s = Math.Max(start, hb), e = Math.Min(end, hb + hsz);
            var pmd = mm.Pt.PmdTableFor(hb);
            int slot = mm.Pt.PmdIndex(hb);
            ulong h = pmd?.Huge[slot] ?? 0;
            // No page table at all is a hole (pagemap_scan_pte_hole): only the VMA's categories.
            ulong cats = pmd is null ? vmaWide : HugetlbCategories(mm, v, hb, h, vmaWide);
            if (!q.Matches(cats))
                continue;
            bool whole = s == hb && e == hb + hsz;
            if (armAll)
            {
                if (whole && (cats & PageCategory.Written) != 0)
                    mm.ProtectHugetlbEntry(pmd!, slot);
                continue;
            }
            ulong pages = (e - s) >> shift;
            ulong got = rep.Add(s, pages, cats & q.Return, shift);
            if (got == 0 || !wp || (cats & PageCategory.Written) == 0)
                continue;
            if (!whole || got != pages)
            {
                rep.Backout(s, got);
                rep.Stop(s);
                continue;
            }
            mm.ProtectHugetlbEntry(pmd!, slot);
        }
    }

    private static void ScanHuge(MmStruct mm, VmArea v, PmdTable pmd, int slot, ulong pmdBase, ulong s, ulong e,
                                 ulong vmaWide, in Query q, ref Reporter rep, bool wp)
    {
        var arch = mm.Kernel.Arch;
        int shift = arch.PageShift;
        ulong h = pmd.Huge[slot];
        bool zero = mm.Kernel.Memory.Kind(arch.Pfn(h)) == PhysicalMemory.FrameKind.Zero;
        ulong cats = vmaWide | PageCategory.Present | PageCategory.Huge;
        if (arch.UffdWp == 0 || (h & arch.UffdWp) == 0) cats |= PageCategory.Written;
        if (zero) cats |= PageCategory.PfnZero;
        if (mm.Kernel.SoftDirtySupported && (h & arch.SoftDirty) != 0) cats |= PageCategory.SoftDirty;
        if (!q.Matches(cats))
            return;
        bool whole = s == pmdBase && e == pmdBase + arch.HugePageSize;
        if (wp && (cats & PageCategory.Written) != 0 && !whole)
        {
            // Partial coverage of a THP that must be protected: split and retry at page level.
            mm.SplitHuge(pmd, slot);
            var t = pmd.Pte[slot]!;
            for (int i = mm.Pt.PteIndex(s); i < mm.Pt.PteIndex(s) + (int)((e - s) >> shift) && !rep.Stopped; i++)
                ReportEntry(mm, v, t, i, pmdBase, vmaWide, q, ref rep, wp, arch, mm.Kernel.Memory, mm.Kernel.SoftDirtySupported, shift);
            return;
        }
        ulong got = rep.Add(s, (e - s) >> shift, cats & q.Return, shift);
        if (wp && (cats & PageCategory.Written) != 0 && got > 0)
        {
            if (got == (e - s) >> shift)
                pmd.Huge[slot] = arch.WrProtect(h) | arch.UffdWp;
            else
            {
                mm.SplitHuge(pmd, slot);
                for (ulong i = 0; i < got; i++)
                    mm.ProtectEntry(s + (i << shift), true, markEmpty: false);
            }
        }
    }
}

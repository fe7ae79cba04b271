using System.Numerics;
using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Proc;


/// <summary>
/// The PAGEMAP_SCAN ioctl (§4). Pages are categorised, filtered by the four masks, merged into
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
        public ulong WalkEnd;

        /// <summary>Reports up to <paramref name="pages"/> pages at <paramref name="va"/>; returns how many were taken.</summary>
        public ulong Add(ulong va, ulong pages, ulong cats, int pageShift)
        {
            if (Stopped)
                return 0;
            if (MaxPages != 0 && Pages >= MaxPages)
            {
                Stop(va);
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
                    return 0;
                }
                Flush();
                Cur = new PageRegion(va, va + (take << pageShift), cats);
                HaveCur = true;
            }
            Pages += take;
            if (take < pages)
                Stop(va + (take << pageShift));
            return take;
        }

        private void Stop(ulong va)
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

    public static SysResult Scan(SimTask task, ref PmScanArg arg, Span<PageRegion> vec)
    {
        var k = task.Kernel;
        if (!k.Version.HasPagemapScan)
            return Errno.ENOTTY;
        if (arg.Size != PageCategory.ArgSize)
            return Errno.EINVAL;
        if ((arg.Flags & ~(PageCategory.ScanWpMatching | PageCategory.ScanCheckWpAsync)) != 0)
            return Errno.EINVAL;
        if (((arg.CategoryInverted | arg.CategoryMask | arg.CategoryAnyofMask | arg.ReturnMask) & ~PageCategory.All) != 0)
            return Errno.EINVAL;
        var arch = k.Arch;
        ulong ps = (ulong)arch.PageSize;
        if ((arg.Start & (ps - 1)) != 0)
            return Errno.EINVAL;
        if (arg.Vec == 0 && arg.VecLen > 0)
            return Errno.EINVAL;
        ulong end = (arg.End + ps - 1) & arch.PageMask;
        if (arg.End > end || arg.Start >= arch.TaskSize || end < arg.Start || end > arch.TaskSize)
            return Errno.EFAULT;
        if (arg.VecLen > (ulong)vec.Length)
            return Errno.EFAULT;
        if (arg.Start == end)
        {
            arg.WalkEnd = arg.Start;
            return SysResult.Success(0);
        }
        var mm = task.Mm;
        bool wp = (arg.Flags & PageCategory.ScanWpMatching) != 0;
        bool checkAsync = (arg.Flags & PageCategory.ScanCheckWpAsync) != 0;
        bool armAll = wp && arg.VecLen == 0;
        var rep = new Reporter { Vec = vec, VecLen = arg.VecLen, MaxPages = arg.MaxPages == ulong.MaxValue ? 0 : arg.MaxPages };
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
                    rep.Flush();
                    arg.WalkEnd = Math.Max(v.Start, arg.Start);
                    return Errno.EPERM;
                }
                continue;
            }
            ulong s = Math.Max(v.Start, arg.Start), e = Math.Min(v.End, end);
            ScanVma(mm, v, s, e, vmaWide, q, ref rep, wp, armAll);
        }
        rep.Flush();
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

    /// <summary>Categories of one page-level entry (§4.2).</summary>
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

using CriuSharp.SimKernel.Uffd;

namespace CriuSharp.SimKernel.Mm;

/// <summary>Userfaultfd registration and write-protection of entries (shared with PAGEMAP_SCAN).</summary>
public sealed partial class MmStruct
{
    internal SysResult UffdRegister(Userfaultfd ctx, ulong start, ulong len, ulong mode)
    {
        if (!Aligned(start) || len == 0 || !Aligned(len))
            return Errno.EINVAL;
        ulong end = start + len;
        if (end > _arch.TaskSize || end < start || !RangeFullyMapped(start, end))
            return Errno.EINVAL;
        if (HugetlbSplitRefused(start) || HugetlbSplitRefused(end))
            return Errno.EINVAL;
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
        {
            var v = _vmas[i];
            if (v.Uffd is not null && !ReferenceEquals(v.Uffd, ctx))
                return Errno.EBUSY;
            if ((v.Flags & (VmaFlags.PfnMap | VmaFlags.Io)) != 0 || v.SpecialName is not null)
                return Errno.EINVAL;
            if ((mode & UffdConstants.RegisterModeWp) != 0 && v.File is not null
                && (ctx.Features & UffdConstants.FeatureWpHugetlbfsShmem) == 0)
                return Errno.EINVAL;
        }
        SplitAt(start);
        SplitAt(end);
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
        {
            var v = _vmas[i];
            v.Uffd = ctx;
            if ((mode & UffdConstants.RegisterModeWp) != 0) v.Flags |= VmaFlags.UffdWp;
            if ((mode & UffdConstants.RegisterModeMissing) != 0) v.Flags |= VmaFlags.UffdMissing;
        }
        MergeRange(start, end);
        return SysResult.Success();
    }

    internal SysResult UffdUnregister(Userfaultfd ctx, ulong start, ulong len)
    {
        if (!Aligned(start) || len == 0 || !Aligned(len))
            return Errno.EINVAL;
        ulong end = start + len;
        SplitAt(start);
        SplitAt(end);
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
        {
            var v = _vmas[i];
            if (!ReferenceEquals(v.Uffd, ctx))
                continue;
            SetUffdWp(v, v.Start, v.End, false, false);
            v.Uffd = null;
            v.Flags &= ~(VmaFlags.UffdWp | VmaFlags.UffdMissing);
        }
        MergeRange(start, end);
        return SysResult.Success();
    }

    internal SysResult UffdWriteProtect(Userfaultfd ctx, ulong start, ulong len, bool wp)
    {
        if (!Aligned(start) || !Aligned(len))
            return Errno.EINVAL;
        ulong end = start + len;
        if (!RangeFullyMapped(start, end))
            return Errno.ENOENT;
        // mwriteprotect_range: a hugetlb range must cover whole huge pages.
        if (HugetlbSplitRefused(start) || HugetlbSplitRefused(end))
            return Errno.EINVAL;
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
            if (!ReferenceEquals(_vmas[i].Uffd, ctx) || (_vmas[i].Flags & VmaFlags.UffdWp) == 0)
                return Errno.ENOENT;
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
        {
            var v = _vmas[i];
            SetUffdWp(v, Math.Max(start, v.Start), Math.Min(end, v.End), wp, ctx.WpUnpopulated);
        }
        return SysResult.Success();
    }

    /// <summary>Sets or clears uffd-wp on every entry of [start, end) within one VMA.</summary>
    internal void SetUffdWp(VmArea v, ulong start, ulong end, bool wp, bool markEmpty)
    {
        if (_arch.UffdWp == 0)
            return;
        if (v.IsHugetlb)
        {
            SetUffdWpHugetlb(v, start, end, wp);
            return;
        }
        for (ulong va = start; va < end;)
        {
            var pmd = Pt.PmdTableFor(va);
            int slot = Pt.PmdIndex(va);
            ulong hb = va & ~(_arch.HugePageSize - 1);
            if (pmd is not null && pmd.Huge[slot] != 0)
            {
                if (va == hb && end - va >= _arch.HugePageSize)
                {
                    ulong h = pmd.Huge[slot];
                    pmd.Huge[slot] = wp ? _arch.WrProtect(h) | _arch.UffdWp : h & ~_arch.UffdWp;
                    va += _arch.HugePageSize;
                    continue;
                }
                SplitHuge(pmd, slot);
            }
            ProtectEntry(va, wp, markEmpty);
            va += (ulong)_arch.PageSize;
        }
    }

    /// <summary>Write-protects (or releases) one page-level entry for uffd-wp.</summary>
    internal void ProtectEntry(ulong va, bool wp, bool markEmpty)
    {
        var t = wp && markEmpty ? Pt.EnsurePteTable(va) : Pt.PteTableFor(va);
        if (t is null)
            return;
        int i = Pt.PteIndex(va);
        ulong e = t.E[i];
        if (e == 0)
        {
            if (wp && markEmpty)
                Pt.Set(t, i, _arch.MakeMarker(Arch.ArchProfile.MarkerUffdWp));
            return;
        }
        if (_arch.IsPresent(e))
            Pt.Set(t, i, wp ? _arch.WrProtect(e) | _arch.UffdWp : e & ~_arch.UffdWp);
        else if (_arch.IsMarker(e))
        {
            if (!wp && (_arch.SwapOffset(e) & Arch.ArchProfile.MarkerUffdWp) != 0)
                Pt.Set(t, i, 0);
        }
        else
            Pt.Set(t, i, wp ? e | _arch.SwpUffdWp : e & ~_arch.SwpUffdWp);
    }
}

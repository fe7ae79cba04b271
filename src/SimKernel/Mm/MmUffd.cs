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
            // vma_can_userfault: missing and minor faults exist only for anonymous, shmem and hugetlb
            // memory (a regular file's pages come from its page cache, not from a monitor).
            if ((mode & (UffdConstants.RegisterModeMissing | UffdConstants.RegisterModeMinor)) != 0 && v.IsFileBacked && !v.IsHugetlb)
                return Errno.EINVAL;
            // UFFDIO_COPY fills holes even without PROT_WRITE, so the range must be writable in principle.
            if ((v.Flags & VmaFlags.MayWrite) == 0)
                return Errno.EPERM;
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
            // Threads waiting on missing pages of the range are woken so they do not hang (they retry
            // the fault, now an ordinary one).
            if ((v.Flags & VmaFlags.UffdMissing) != 0)
                ctx.WakeRange(Math.Max(start, v.Start), Math.Min(end, v.End) - Math.Max(start, v.Start));
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

    /// <summary>userfaultfd_release: every VMA of the context is unregistered (its write-protection lifted).</summary>
    internal void UffdRelease(Userfaultfd ctx)
    {
        if (Dead)
            return;
        foreach (var v in _vmas)
        {
            if (!ReferenceEquals(v.Uffd, ctx))
                continue;
            SetUffdWp(v, v.Start, v.End, false, false);
            v.Uffd = null;
            v.Flags &= ~(VmaFlags.UffdWp | VmaFlags.UffdMissing);
        }
        if (_vmas.Count > 0)
            MergeRange(_vmas[0].Start, _vmas[^1].End);
    }

    /// <summary>
    /// Whether a fault at <paramref name="va"/> in a VMA registered for missing pages goes to the
    /// monitor: anonymous memory whose entry is none (or only a uffd-wp marker, pte_none_mostly), or
    /// shmem whose page is not in the page cache either (shmem_get_folio_gfp).
    /// </summary>
    internal bool UffdPageMissing(VmArea v, ulong va)
    {
        var pmd = Pt.PmdTableFor(va);
        if (pmd is not null)
        {
            if (pmd.Huge[Pt.PmdIndex(va)] != 0)
                return false;
            if (pmd.Pte[Pt.PmdIndex(va)] is { } t && !NoneMostly(t.E[Pt.PteIndex(va)]))
                return false;
        }
        if (v.File is { IsShmem: true } f)
            return !f.Pages.ContainsKey(v.PgOff + (long)((va - v.Start) >> _arch.PageShift));
        return true;
    }

    /// <summary>pte_none_mostly: empty, or holding only a uffd-wp marker.</summary>
    private bool NoneMostly(ulong e) =>
        e == 0 || (_arch.IsMarker(e) && (_arch.SwapOffset(e) & ~Arch.ArchProfile.MarkerUffdWp) == 0);

    /// <summary>
    /// mfill_atomic (mm/userfaultfd.c) for UFFDIO_COPY and UFFDIO_ZEROPAGE: the range must lie in one
    /// VMA registered with a userfaultfd (else ENOENT); pages are filled in address order until one is
    /// already there (EEXIST) or memory runs out. Returns the bytes filled, or -errno when none were.
    /// </summary>
    internal long MfillAtomic(ulong dst, ulong len, ReadOnlySpan<byte> src, bool zero, bool wp)
    {
        int vi = FindIndex(dst);
        if (vi < 0)
            return -(long)Errno.ENOENT;
        var v = _vmas[vi];
        if (dst + len > v.End || v.Uffd is null)
            return -(long)Errno.ENOENT;
        if (wp && (v.Flags & VmaFlags.UffdWp) == 0)
            return -(long)Errno.EINVAL;
        // Not modelled: filling hugetlb pages (mfill_atomic_hugetlb), which refuses ZEROPAGE with EINVAL
        // anyway; COPY into hugetlb is refused the same way here.
        if (v.IsHugetlb || v.IsFileBacked)
            return -(long)Errno.EINVAL;
        int ps = _arch.PageSize;
        ulong wpBit = wp ? _arch.UffdWp : 0;
        long copied = 0;
        var err = Errno.None;
        for (ulong a = dst; a < dst + len; a += (ulong)ps)
        {
            var pmd = Pt.EnsurePmdTable(a);
            if (pmd.Huge[Pt.PmdIndex(a)] != 0)
            {
                err = Errno.EEXIST; // a THP is never overridden
                break;
            }
            var t = Pt.EnsurePteTable(a);
            int i = Pt.PteIndex(a);
            ulong e = t.E[i];
            var bytes = zero ? default : src.Slice((int)copied, ps);
            if (v.IsShared && v.File is { IsShmem: true } f)
            {
                // shmem_mfill_atomic_pte: the page goes into the page cache (EEXIST if one is there)
                // and is mapped; ZEROPAGE allocates a zeroed page the same way.
                long idx = v.PgOff + (long)((a - v.Start) >> _arch.PageShift);
                if ((idx << _arch.PageShift) >= f.Size)
                {
                    err = Errno.EFAULT;
                    break;
                }
                if (f.Pages.ContainsKey(idx) || !NoneMostly(e))
                {
                    err = Errno.EEXIST;
                    break;
                }
                long cache = _mem.AllocateZeroed(PhysicalMemory.FrameKind.PageCache);
                if (cache < 0)
                {
                    err = Errno.ENOMEM;
                    break;
                }
                bytes.CopyTo(_mem.PageMut(cache));
                f.Pages[idx] = cache;
                if (e != 0)
                    Pt.Set(t, i, 0);
                InstallPage(t, i, _arch.MakePresent(cache, v.CanWrite, dirty: true) | wpBit, cache, v);
            }
            else if (zero)
            {
                // mfill_atomic_pte_zeropage: only a truly empty entry (pte_none, not a marker).
                if (e != 0)
                {
                    err = Errno.EEXIST;
                    break;
                }
                InstallPage(t, i, _arch.MakePresent(_mem.ZeroPfn, writable: false, dirty: false), _mem.ZeroPfn, v);
            }
            else
            {
                // mfill_atomic_install_pte: a uffd-wp marker may be overwritten; the new page is
                // dirty (so soft-dirty) and writable as the VMA allows.
                if (!NoneMostly(e))
                {
                    err = Errno.EEXIST;
                    break;
                }
                long pfn = _mem.AllocateZeroed(PhysicalMemory.FrameKind.Anon);
                if (pfn < 0)
                {
                    err = Errno.ENOMEM;
                    break;
                }
                bytes.CopyTo(_mem.PageMut(pfn));
                if (e != 0)
                    Pt.Set(t, i, 0);
                InstallPage(t, i, _arch.MakePresent(pfn, v.CanWrite, dirty: true) | wpBit, pfn, v);
            }
            copied += ps;
        }
        return copied > 0 ? copied : -(long)err;
    }
}

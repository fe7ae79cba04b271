namespace CriuSharp.SimKernel.Mm;

/// <summary>The mmap family: every call validates first, then changes the address space.</summary>
public sealed partial class MmStruct
{
    private ulong PageAlign(ulong len) => (len + (ulong)_arch.PageSize - 1) & _arch.PageMask;
    private bool Aligned(ulong v) => (v & ((ulong)_arch.PageSize - 1)) == 0;

    private static VmaFlags ProtToVm(Prot prot) =>
        ((prot & Prot.Read) != 0 ? VmaFlags.Read : 0)
        | ((prot & Prot.Write) != 0 ? VmaFlags.Write : 0)
        | ((prot & Prot.Exec) != 0 ? VmaFlags.Exec : 0);

    private const VmaFlags ProtMask = VmaFlags.Read | VmaFlags.Write | VmaFlags.Exec;

    /// <summary>A free range of <paramref name="len"/> bytes below the mmap base, searched top-down.</summary>
    internal ulong FindFreeArea(ulong len, ulong hint)
    {
        if (hint != 0 && Aligned(hint) && hint + len <= _arch.TaskSize && hint + len > hint && RangeFree(hint, hint + len))
            return hint;
        // Anonymous mappings of a huge page or more are aligned so they can hold THPs.
        ulong align = len >= _arch.HugePageSize ? _arch.HugePageSize : (ulong)_arch.PageSize;
        ulong top = MmapBase;
        for (int i = FirstEndingAbove(top) - 1; ; i--)
        {
            ulong floor = i >= 0 ? _vmas[i].End : 0x10000UL;
            if (top >= len)
            {
                ulong cand = (top - len) & ~(align - 1);
                if (cand >= floor)
                    return cand;
            }
            if (i < 0)
                return 0;
            top = Math.Min(top, _vmas[i].Start);
        }
    }

    /// <summary>mmap(2). Returns the address of the new mapping.</summary>
    public SysResult Mmap(ulong addr, ulong len, Prot prot, MapFlags flags, SimFile? file = null, long offset = 0)
    {
        // A MAP_FIXED mapping that replaced a registered range: vm_mmap_pgoff's userfaultfd_unmap_complete.
        var r = MmapCore(addr, len, prot, flags, file, offset);
        CompleteUnmapEvents();
        return r;
    }

    private SysResult MmapCore(ulong addr, ulong len, Prot prot, MapFlags flags, SimFile? file, long offset)
    {
        if (Dead)
            return Errno.ESRCH;
        if (len == 0 || (prot & ~(Prot.Read | Prot.Write | Prot.Exec)) != 0)
            return Errno.EINVAL;
        ulong size = PageAlign(len);
        if (size < len || size > _arch.TaskSize)
            return Errno.ENOMEM;
        if ((offset & (_arch.PageSize - 1)) != 0 || offset < 0)
            return Errno.EINVAL;
        var type = flags & MapFlags.SharedValidate;
        if (type == 0)
            return Errno.EINVAL;
        bool shared = type != MapFlags.Private;
        bool anon = (flags & MapFlags.Anonymous) != 0;
        if (anon && file is not null)
            return Errno.EINVAL;
        if (!anon && file is null)
            return Errno.EBADF;
        // hugetlb: a hugetlbfs file, or MAP_HUGETLB with the page size's log2 in bits 26-31
        // (ksys_mmap_pgoff: MAP_HUGETLB on any other file is EINVAL, an unknown size too).
        if (file is { IsHugetlb: true })
            return HugetlbMmap(addr, len, prot, flags, file, offset, file.Hugetlb!, shared);
        if ((flags & MapFlags.HugeTlb) != 0)
        {
            if (!anon)
                return Errno.EINVAL;
            var pool = _k.Hugetlb.BySizeLog((int)(((uint)flags >> HugetlbState.HugeShift) & HugetlbState.HugeMask));
            if (pool is null)
                return Errno.EINVAL;
            return HugetlbMmap(addr, len, prot, flags, null, 0, pool, shared);
        }
        bool fixedAny = (flags & (MapFlags.Fixed | MapFlags.FixedNoReplace)) != 0;
        ulong start;
        if (fixedAny)
        {
            if (!Aligned(addr))
                return Errno.EINVAL;
            if (addr + size > _arch.TaskSize || addr + size < addr)
                return Errno.ENOMEM;
            if ((flags & MapFlags.FixedNoReplace) != 0 && !RangeFree(addr, addr + size))
                return Errno.EEXIST;
            start = addr;
        }
        else
        {
            start = FindFreeArea(size, addr & _arch.PageMask);
            if (start == 0)
                return Errno.ENOMEM;
        }
        if (fixedAny)
            DoMunmap(start, start + size);

        var vmFlags = ProtToVm(prot) | VmaFlags.MayRead | VmaFlags.MayWrite | VmaFlags.MayExec;
        if (shared)
            vmFlags |= VmaFlags.Shared | VmaFlags.MayShare;
        else if ((prot & Prot.Write) != 0 && (flags & MapFlags.NoReserve) == 0)
            vmFlags |= VmaFlags.Account;
        if ((flags & MapFlags.GrowsDown) != 0) vmFlags |= VmaFlags.GrowsDown;
        if ((flags & MapFlags.NoReserve) != 0) vmFlags |= VmaFlags.NoReserve;
        if ((flags & MapFlags.Locked) != 0) vmFlags |= VmaFlags.Locked;
        vmFlags |= NewVmaSoftDirty; // S10.1: every new mapping

        var vma = new VmArea
        {
            Start = start,
            End = start + size,
            Flags = vmFlags,
            File = anon && shared ? _k.Fs.CreateShmem((long)size) : file,
            PgOff = anon ? 0 : offset >> _arch.PageShift,
        };
        Insert(vma);
        int idx = MergeAround(_vmas.IndexOf(vma));
        // S10.2: when the new mapping merged into a neighbour, the whole result is marked.
        _vmas[idx].Flags |= NewVmaSoftDirty;

        if ((flags & (MapFlags.Populate | MapFlags.Locked)) != 0)
        {
            bool writeFault = (vmFlags & (VmaFlags.Write | VmaFlags.Shared)) == VmaFlags.Write;
            Populate(start, start + size, writeFault);
        }
        return SysResult.Success((long)start);
    }

    /// <summary>Installs a special mapping ([vvar], [vdso]); like exec's, it is marked VM_SOFTDIRTY (S10.4).</summary>
    internal void InsertSpecial(ulong start, ulong len, string name, VmaFlags flags)
        => Insert(new VmArea { Start = start, End = start + len, Flags = flags | NewVmaSoftDirty, SpecialName = name });

    /// <summary>munmap(2).</summary>
    public SysResult Munmap(ulong addr, ulong len)
    {
        if (!Aligned(addr) || len == 0)
            return Errno.EINVAL;
        ulong end = addr + PageAlign(len);
        if (end > _arch.TaskSize || end < addr)
            return Errno.EINVAL;
        if (HugetlbSplitRefused(addr) || HugetlbSplitRefused(end))
            return Errno.EINVAL;
        DoMunmap(addr, end);
        CompleteUnmapEvents();
        return SysResult.Success();
    }

    internal void DoMunmap(ulong start, ulong end)
    {
        if (RangeFree(start, end))
            return;
        PrepUnmapEvents(start, end);
        SplitAt(start);
        SplitAt(end);
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end;)
        {
            var v = _vmas[i];
            ZapRange(v, v.Start, v.End, removeGuards: true);
            _vmas.RemoveAt(i);
            if (v.IsHugetlb)
                ReleaseHugetlbVma(v);
        }
        FreePageTables(start, end);
    }

    /// <summary>mprotect(2). Keeps soft-dirty (K3) and never makes an entry writable: writes fault first.</summary>
    public SysResult Mprotect(ulong addr, ulong len, Prot prot)
    {
        if (!Aligned(addr) || (prot & ~(Prot.Read | Prot.Write | Prot.Exec)) != 0)
            return Errno.EINVAL;
        if (len == 0)
            return SysResult.Success();
        ulong end = addr + PageAlign(len);
        if (end < addr)
            return Errno.ENOMEM;
        if (!RangeFullyMapped(addr, end))
            return Errno.ENOMEM;
        if (HugetlbSplitRefused(addr) || HugetlbSplitRefused(end))
            return Errno.EINVAL;
        var want = ProtToVm(prot);
        for (int i = FirstEndingAbove(addr); i < _vmas.Count && _vmas[i].Start < end; i++)
        {
            var f = _vmas[i].Flags;
            if ((want & VmaFlags.Write) != 0 && (f & VmaFlags.MayWrite) == 0) return Errno.EACCES;
            if ((want & VmaFlags.Exec) != 0 && (f & VmaFlags.MayExec) == 0) return Errno.EACCES;
            if ((f & VmaFlags.PfnMap) != 0 && _vmas[i].SpecialName is not null) return Errno.EACCES;
        }
        SplitAt(addr);
        SplitAt(end);
        for (int i = FirstEndingAbove(addr); i < _vmas.Count && _vmas[i].Start < end; i++)
        {
            var v = _vmas[i];
            var newFlags = (v.Flags & ~ProtMask) | want;
            if (!v.IsShared && (want & VmaFlags.Write) != 0 && (v.Flags & VmaFlags.NoReserve) == 0)
                newFlags |= VmaFlags.Account;
            // mprotect_fixup gives the commit charge back when an anonymous VMA that never had a
            // page (no anon_vma) loses write permission; that also lets it merge with read-only neighbours.
            else if ((want & VmaFlags.Write) == 0 && v.File is null && !v.IsShared && v.AnonVmaId == 0)
                newFlags &= ~VmaFlags.Account;
            if (newFlags == v.Flags)
                continue;
            ChangeProtection(v, v.Start, v.End, newFlags);
            v.Flags = newFlags;
        }
        MergeRange(addr, end);
        return SysResult.Success();
    }

    /// <summary>Merges every VMA of a changed range [start, end) with its neighbours.</summary>
    internal void MergeRange(ulong start, ulong end)
    {
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
            i = MergeAround(i, MergeKind.ModifiedRange);
    }

    private void ChangeProtection(VmArea v, ulong start, ulong end, VmaFlags newFlags)
    {
        bool canWrite = (newFlags & VmaFlags.Write) != 0;
        bool none = (newFlags & ProtMask) == 0;
        foreach (var (baseVa, pmd, slot) in Pt.Slots(start, end))
        {
            if (pmd.Huge[slot] != 0)
            {
                // A hugetlb uffd-wp marker is not a present entry: nothing to reprotect.
                if (_arch.IsPresent(pmd.Huge[slot]))
                    pmd.Huge[slot] = Reprotect(pmd.Huge[slot], canWrite, none);
                continue;
            }
            var t = pmd.Pte[slot];
            if (t is null || t.Used == 0)
                continue;
            ulong s = Math.Max(start, baseVa), e = Math.Min(end, baseVa + _arch.HugePageSize);
            for (ulong va = s; va < e; va += (ulong)_arch.PageSize)
            {
                int i = Pt.PteIndex(va);
                ulong pte = t.E[i];
                if (_arch.IsPresent(pte))
                    Pt.Set(t, i, Reprotect(pte, canWrite, none));
            }
        }
    }

    private ulong Reprotect(ulong e, bool canWrite, bool none)
    {
        if (!canWrite)
            e = _arch.WrProtect(e);
        return none ? _arch.MkProtNone(e) : (_arch.IsProtNone(e) ? _arch.MkAccessible(e) : e);
    }

    /// <summary>mremap(2): shrink, grow in place, or move (marking moved entries soft-dirty, S8).</summary>
    public SysResult Mremap(ulong oldAddr, ulong oldLen, ulong newLen, MremapFlags flags, ulong newAddr = 0)
    {
        _remapEvent = null;
        var r = MremapCore(oldAddr, oldLen, newLen, flags, newAddr);
        // notify_uffd: the destination's unmaps, then REMAP, then the old range's unmap.
        CompleteUnmapEvents(_earlyUnmapEvents ?? []);
        _earlyUnmapEvents = null;
        if (_remapEvent is var (ctx, msg))
            ctx.Event(msg, Current);
        _remapEvent = null;
        CompleteUnmapEvents();
        return r;
    }

    /// <summary>mremap's pending REMAP (mremap_userfaultfd_prep armed it; sent at the end).</summary>
    private (Uffd.Userfaultfd Ctx, UffdMsg Msg)? _remapEvent;
    /// <summary>mremap's unmaps of the MREMAP_FIXED destination (uf_unmap_early).</summary>
    private List<(Uffd.Userfaultfd Ctx, ulong Start, ulong End)>? _earlyUnmapEvents;

    private SysResult MremapCore(ulong oldAddr, ulong oldLen, ulong newLen, MremapFlags flags, ulong newAddr)
    {
        if ((flags & ~(MremapFlags.MayMove | MremapFlags.Fixed | MremapFlags.DontUnmap)) != 0 || !Aligned(oldAddr))
            return Errno.EINVAL;
        bool mayMove = (flags & MremapFlags.MayMove) != 0;
        bool isFixed = (flags & MremapFlags.Fixed) != 0;
        bool dontUnmap = (flags & MremapFlags.DontUnmap) != 0;
        if ((isFixed || dontUnmap) && !mayMove)
            return Errno.EINVAL;
        oldLen = PageAlign(oldLen);
        newLen = PageAlign(newLen);
        if (newLen == 0 || oldLen == 0)
            return Errno.EINVAL;
        // Moving or resizing hugetlb mappings is not modelled (the kernel allows huge-aligned moves).
        if (Find(oldAddr) is { IsHugetlb: true })
            return Errno.EINVAL;
        if (dontUnmap && oldLen != newLen)
            return Errno.EINVAL;
        var vma = Find(oldAddr);
        if (vma is null || oldAddr + oldLen > vma.End)
            return Errno.EFAULT;
        if (dontUnmap && (vma.IsShared || vma.File is not null))
            return Errno.EINVAL;
        if (isFixed)
        {
            if (!Aligned(newAddr) || newAddr + newLen > _arch.TaskSize || newAddr + newLen < newAddr)
                return Errno.EINVAL;
            if (newAddr < oldAddr + oldLen && oldAddr < newAddr + newLen)
                return Errno.EINVAL;
            DoMunmap(newAddr, newAddr + newLen);
            // mremap_to: the destination's unmap goes out before REMAP; the shrink of the old
            // range (uf_unmap) after it, with the old range's own unmap.
            _earlyUnmapEvents = TakeUnmapEvents();
            if (newLen < oldLen)
            {
                DoMunmap(oldAddr + newLen, oldAddr + oldLen);
                oldLen = newLen;
            }
            return MoveVma(oldAddr, oldLen, newAddr, newLen, dontUnmap);
        }
        if (newLen <= oldLen && !dontUnmap)
        {
            DoMunmap(oldAddr + newLen, oldAddr + oldLen);
            return SysResult.Success((long)oldAddr);
        }
        if (!dontUnmap && oldAddr + oldLen == vma.End && oldAddr + newLen <= _arch.TaskSize
            && RangeFree(vma.End, oldAddr + newLen) && (vma.Flags & VmaFlags.DontExpand) == 0)
        {
            // S10.7: growth in place does not mark the VMA.
            vma.End = oldAddr + newLen;
            MergeAround(_vmas.IndexOf(vma));
            return SysResult.Success((long)oldAddr);
        }
        if (!mayMove)
            return Errno.ENOMEM;
        ulong dest = FindFreeArea(newLen, 0);
        if (dest == 0)
            return Errno.ENOMEM;
        return MoveVma(oldAddr, oldLen, dest, newLen, dontUnmap);
    }

    private SysResult MoveVma(ulong oldAddr, ulong oldLen, ulong newAddr, ulong newLen, bool dontUnmap)
    {
        SplitAt(oldAddr);
        SplitAt(oldAddr + oldLen);
        var src = Find(oldAddr)!;
        var dst = src.Clone();
        dst.Start = newAddr;
        dst.End = newAddr + newLen;
        Insert(dst);
        var remapCtx = RemapPrep(dst);
        bool dropWp = src.Uffd is not null && dst.Uffd is null;
        bool mark = SoftDirtyEnabled && _k.Version.MremapMarksSoftDirty;
        ulong ps = (ulong)_arch.PageSize, hsz = _arch.HugePageSize;
        for (ulong off = 0; off < oldLen;)
        {
            ulong from = oldAddr + off, to = newAddr + off;
            var spmd = Pt.PmdTableFor(from);
            int sslot = Pt.PmdIndex(from);
            if (spmd is not null && spmd.Huge[sslot] != 0)
            {
                if ((from & (hsz - 1)) == 0 && (to & (hsz - 1)) == 0 && off + hsz <= oldLen)
                {
                    ulong h = spmd.Huge[sslot];
                    spmd.Huge[sslot] = 0;
                    var dpmd = Pt.EnsurePmdTable(to);
                    dpmd.Huge[Pt.PmdIndex(to)] = mark ? h | _arch.SoftDirty : h;
                    off += hsz;
                    continue;
                }
                SplitHuge(spmd, sslot);
            }
            var st = spmd?.Pte[sslot];
            if (st is not null && st.E[Pt.PteIndex(from)] is var e && e != 0)
            {
                Pt.Set(st, Pt.PteIndex(from), 0);
                if (mark)
                {
                    if (_arch.IsPresent(e)) e |= _arch.SoftDirty;
                    else if (!_arch.IsMarker(e)) e |= _arch.SwpSoftDirty;
                }
                if (dropWp && _arch.UffdWp != 0)
                {
                    // move_ptes without EVENT_REMAP: the moved entries lose uffd-wp, a bare marker goes.
                    if (_arch.IsPresent(e)) e &= ~_arch.UffdWp;
                    else if (_arch.IsMarker(e)) e = (_arch.SwapOffset(e) & ~Arch.ArchProfile.MarkerUffdWp) == 0 ? 0 : e;
                    else e &= ~_arch.SwpUffdWp;
                }
                if (e != 0)
                    Pt.Set(to, e);
            }
            off += ps;
        }
        if (!dontUnmap)
        {
            // The old range is unmapped with the old VMA's registration still on it (move_vma's
            // do_vmi_munmap with uf_unmap), so an UNMAP follows the REMAP.
            if (src.Uffd is { } oldCtx)
                PrepUnmapEvent(oldCtx, oldAddr, oldAddr + oldLen);
            _vmas.Remove(src);
            FreePageTables(oldAddr, oldAddr + oldLen);
        }
        if (remapCtx is not null)
            _remapEvent = (remapCtx, UffdMsg.Remap(oldAddr, newAddr, oldLen));
        MergeAround(_vmas.IndexOf(dst));
        return SysResult.Success((long)newAddr);
    }

    /// <summary>brk(2): returns the new break, or the old one when it cannot move.</summary>
    public ulong SetBrk(ulong newBrk)
    {
        ulong r = SetBrkCore(newBrk);
        CompleteUnmapEvents();
        return r;
    }

    private ulong SetBrkCore(ulong newBrk)
    {
        if (newBrk < StartBrk)
            return Brk;
        ulong newEnd = PageAlign(newBrk), oldEnd = PageAlign(Brk);
        if (newEnd == oldEnd)
        {
            Brk = newBrk;
            return Brk;
        }
        if (newEnd < oldEnd)
        {
            DoMunmap(newEnd, oldEnd);
            Brk = newBrk;
            return Brk;
        }
        if (!RangeFree(oldEnd, newEnd) || newEnd > MmapBase)
            return Brk;
        int i = FindIndex(oldEnd - 1);
        VmArea heap;
        if (oldEnd > StartBrk && i >= 0 && _vmas[i].End == oldEnd && _vmas[i].IsAnonymous && !_vmas[i].IsShared)
        {
            heap = _vmas[i];
            heap.End = newEnd;
        }
        else
        {
            heap = new VmArea
            {
                Start = oldEnd,
                End = newEnd,
                Flags = VmaFlags.Read | VmaFlags.Write | VmaFlags.MayRead | VmaFlags.MayWrite | VmaFlags.MayExec | VmaFlags.Account,
            };
            Insert(heap);
        }
        int idx = MergeAround(_vmas.IndexOf(heap));
        _vmas[idx].Flags |= NewVmaSoftDirty; // S10.3
        Brk = newBrk;
        return Brk;
    }

    /// <summary>madvise(2).</summary>
    public SysResult Madvise(ulong addr, ulong len, Madvise advice)
    {
        if (!Aligned(addr))
            return Errno.EINVAL;
        if (len == 0)
            return SysResult.Success();
        ulong end = addr + PageAlign(len);
        if (end < addr)
            return Errno.EINVAL;
        if (HugetlbSplitRefused(addr) || HugetlbSplitRefused(end))
            return Errno.EINVAL;
        switch (advice)
        {
            case CriuSharp.KernelApi.Madvise.Normal: return ChangeVmaFlags(addr, end, VmaFlags.SeqRead | VmaFlags.RandRead, 0);
            case CriuSharp.KernelApi.Madvise.Random: return ChangeVmaFlags(addr, end, VmaFlags.SeqRead, VmaFlags.RandRead);
            case CriuSharp.KernelApi.Madvise.Sequential: return ChangeVmaFlags(addr, end, VmaFlags.RandRead, VmaFlags.SeqRead);
            case CriuSharp.KernelApi.Madvise.DontFork: return ChangeVmaFlags(addr, end, 0, VmaFlags.DontCopy);
            case CriuSharp.KernelApi.Madvise.DoFork: return ChangeVmaFlags(addr, end, VmaFlags.DontCopy, 0);
            case CriuSharp.KernelApi.Madvise.DontDump: return ChangeVmaFlags(addr, end, 0, VmaFlags.DontDump);
            case CriuSharp.KernelApi.Madvise.DoDump: return ChangeVmaFlags(addr, end, VmaFlags.DontDump, 0);
            case CriuSharp.KernelApi.Madvise.Mergeable: return ChangeVmaFlags(addr, end, 0, VmaFlags.Mergeable);
            case CriuSharp.KernelApi.Madvise.Unmergeable: return ChangeVmaFlags(addr, end, VmaFlags.Mergeable, 0);
            case CriuSharp.KernelApi.Madvise.HugePage: return ChangeVmaFlags(addr, end, VmaFlags.NoHugePage, VmaFlags.HugePage);
            case CriuSharp.KernelApi.Madvise.NoHugePage: return ChangeVmaFlags(addr, end, VmaFlags.HugePage, VmaFlags.NoHugePage);
            case CriuSharp.KernelApi.Madvise.WillNeed:
            case CriuSharp.KernelApi.Madvise.Cold:
                return RangeFullyMapped(addr, end) ? SysResult.Success() : Errno.ENOMEM;
            case CriuSharp.KernelApi.Madvise.DontNeed:
            case CriuSharp.KernelApi.Madvise.Free:
                RemoveEvents(addr, end, v => (v.Flags & (VmaFlags.Locked | VmaFlags.PfnMap | VmaFlags.HugeTlb)) != 0
                                            || (advice == CriuSharp.KernelApi.Madvise.Free && v.File is not null));
                return ForEachMapped(addr, end, (v, s, e) =>
                {
                    if ((v.Flags & (VmaFlags.Locked | VmaFlags.PfnMap | VmaFlags.HugeTlb)) != 0)
                        return Errno.EINVAL;
                    if (advice == CriuSharp.KernelApi.Madvise.Free && v.File is not null)
                        return Errno.EINVAL;
                    ZapRange(v, s, e, removeGuards: false);
                    return Errno.None;
                });
            case CriuSharp.KernelApi.Madvise.PageOut:
                return ForEachMapped(addr, end, (v, s, e) =>
                {
                    if ((v.Flags & (VmaFlags.Locked | VmaFlags.PfnMap | VmaFlags.HugeTlb)) != 0)
                        return Errno.EINVAL;
                    PageOut(v, s, e);
                    return Errno.None;
                });
            case CriuSharp.KernelApi.Madvise.PopulateRead:
            case CriuSharp.KernelApi.Madvise.PopulateWrite:
            {
                if (!RangeFullyMapped(addr, end))
                    return Errno.ENOMEM;
                bool write = advice == CriuSharp.KernelApi.Madvise.PopulateWrite;
                for (int i = FirstEndingAbove(addr); i < _vmas.Count && _vmas[i].Start < end; i++)
                {
                    var v = _vmas[i];
                    if ((v.Flags & (VmaFlags.PfnMap | VmaFlags.Io)) != 0 || (write ? !v.CanWrite : !v.CanRead))
                        return Errno.EINVAL;
                }
                return Populate(addr, end, write);
            }
            case CriuSharp.KernelApi.Madvise.Collapse:
                return ForEachMapped(addr, end, Collapse);
            case CriuSharp.KernelApi.Madvise.GuardInstall:
            case CriuSharp.KernelApi.Madvise.GuardRemove:
            {
                if (!_k.Version.HasGuardRegions)
                    return Errno.EINVAL;
                bool install = advice == CriuSharp.KernelApi.Madvise.GuardInstall;
                return ForEachMapped(addr, end, (v, s, e) =>
                {
                    if ((v.Flags & (VmaFlags.Locked | VmaFlags.PfnMap | VmaFlags.HugeTlb)) != 0)
                        return Errno.EINVAL;
                    ZapRange(v, s, e, removeGuards: true);
                    if (install)
                        for (ulong va = s; va < e; va += (ulong)_arch.PageSize)
                            Pt.Set(va, _arch.MakeMarker(Arch.ArchProfile.MarkerGuard));
                    return Errno.None;
                });
            }
            default:
                return Errno.EINVAL;
        }
    }

    /// <summary>Applies <paramref name="op"/> to each mapped piece; a hole yields ENOMEM after the rest is done.</summary>
    /// <summary>
    /// MADV_COLLAPSE (mm/khugepaged.c madvise_collapse): every PMD-aligned range of a private
    /// anonymous VMA inside [start, end) becomes one THP now, whatever the sysfs "enabled" mode,
    /// unless the VMA is VM_NOHUGEPAGE (EINVAL). A PMD whose entries carry uffd-wp is refused
    /// (EINVAL), as are empty or zero-page entries in a userfaultfd-armed VMA (EBUSY); swap entries
    /// are read back first. The new PMD is dirty, hence soft-dirty (pmd_mkdirty).
    /// </summary>
    private Errno Collapse(VmArea v, ulong start, ulong end)
    {
        if (v.File is not null || v.IsShared || v.IsHugetlb || (v.Flags & (VmaFlags.NoHugePage | VmaFlags.PfnMap | VmaFlags.Io)) != 0)
            return Errno.EINVAL;
        ulong hsz = _arch.HugePageSize;
        int ps = _arch.PageSize;
        var result = Errno.None;
        for (ulong hb = (start + hsz - 1) & ~(hsz - 1); hb + hsz <= end; hb += hsz)
        {
            var pmd = Pt.EnsurePmdTable(hb);
            int slot = Pt.PmdIndex(hb);
            if (pmd.Huge[slot] != 0 && _mem.Kind(_arch.Pfn(pmd.Huge[slot])) != PhysicalMemory.FrameKind.Zero)
                continue; // already a THP
            var t = pmd.Pte[slot];
            bool armed = v.Uffd is not null;
            var refusal = Errno.None;
            for (int i = 0; t is not null && i < _arch.PtrsPerTable && refusal == Errno.None; i++)
            {
                ulong e = t.E[i];
                if (e != 0 && _arch.IsMarker(e))
                    refusal = Errno.EINVAL;
                else if (e != 0 && _arch.HasUffdWpState(e))
                    refusal = Errno.EINVAL;
                else if (armed && (e == 0 || (_arch.IsPresent(e) && _mem.Kind(_arch.Pfn(e)) == PhysicalMemory.FrameKind.Zero)))
                    refusal = Errno.EBUSY;
            }
            if (t is null && armed)
                refusal = Errno.EBUSY;
            if (refusal != Errno.None)
            {
                result = refusal;
                continue;
            }
            // Swapped-out entries are read back before the copy (__collapse_huge_page_swapin).
            for (int i = 0; t is not null && i < _arch.PtrsPerTable; i++)
                if (t.E[i] != 0 && !_arch.IsPresent(t.E[i]))
                    HandleFault(hb + ((ulong)i << _arch.PageShift), write: false, force: true);
            long head = _mem.AllocateHuge();
            if (head < 0)
                return Errno.ENOMEM;
            if (pmd.Huge[slot] != 0)
                pmd.Huge[slot] = 0; // the huge zero page is simply replaced
            for (int i = 0; t is not null && i < _arch.PtrsPerTable; i++)
            {
                ulong e = t.E[i];
                if (e == 0 || !_arch.IsPresent(e))
                    continue;
                long pfn = _arch.Pfn(e);
                if (_mem.Kind(pfn) != PhysicalMemory.FrameKind.Zero)
                    _mem.Page(pfn).CopyTo(_mem.PageMut(head + i));
                ZapEntry(t, i, v, removeGuards: true);
            }
            _ = ps;
            for (long p = head; p < head + _arch.PagesPerHuge; p++)
                _mem.Map(p);
            CountIn(head, v, _arch.PagesPerHuge);
            if (v.AnonVmaId == 0)
                v.AnonVmaId = _k.NextAnonVmaId();
            pmd.SetTable(slot, null);
            pmd.Huge[slot] = _arch.MakeHuge(head, v.CanWrite, dirty: true);
        }
        return result;
    }

    private SysResult ForEachMapped(ulong start, ulong end, Func<VmArea, ulong, ulong, Errno> op)
    {
        bool hole = !RangeFullyMapped(start, end);
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
        {
            var v = _vmas[i];
            var r = op(v, Math.Max(start, v.Start), Math.Min(end, v.End));
            if (r != Errno.None)
                return r;
        }
        return hole ? Errno.ENOMEM : SysResult.Success();
    }

    private SysResult ChangeVmaFlags(ulong start, ulong end, VmaFlags clear, VmaFlags set)
    {
        bool hole = !RangeFullyMapped(start, end);
        if (RangeFree(start, end))
            return Errno.ENOMEM;
        SplitAt(start);
        SplitAt(end);
        for (int i = FirstEndingAbove(start); i < _vmas.Count && _vmas[i].Start < end; i++)
            _vmas[i].Flags = (_vmas[i].Flags & ~clear) | set;
        MergeRange(start, end);
        return hole ? Errno.ENOMEM : SysResult.Success();
    }

    /// <summary>
    /// MADV_PAGEOUT: exclusively mapped anonymous pages go to swap carrying their soft-dirty bit (K1);
    /// file and shmem pages are only unmapped, so their bit is lost (C5). Shared pages are skipped.
    /// </summary>
    private void PageOut(VmArea v, ulong start, ulong end)
    {
        foreach (var (baseVa, pmd, slot) in Pt.Slots(start, end).ToList())
        {
            if (pmd.Huge[slot] != 0)
            {
                if (_mem.Kind(_arch.Pfn(pmd.Huge[slot])) == PhysicalMemory.FrameKind.Zero)
                    continue;
                SplitHuge(pmd, slot);
            }
            var t = pmd.Pte[slot];
            if (t is null || t.Used == 0)
                continue;
            ulong s = Math.Max(start, baseVa), e = Math.Min(end, baseVa + _arch.HugePageSize);
            for (ulong va = s; va < e; va += (ulong)_arch.PageSize)
            {
                int i = Pt.PteIndex(va);
                ulong pte = t.E[i];
                if (!_arch.IsPresent(pte))
                    continue;
                long pfn = _arch.Pfn(pte);
                var kind = _mem.Kind(pfn);
                if (kind == PhysicalMemory.FrameKind.PageCache)
                {
                    if (_mem.MapCount(pfn) == 1)
                        ZapEntry(t, i, v, removeGuards: false);
                    continue;
                }
                if (kind != PhysicalMemory.FrameKind.Anon || _mem.MapCount(pfn) != 1 || PinnedPfns.Contains(pfn))
                    continue;
                ulong slotNo = _k.Swap.Store(_mem.Page(pfn));
                if (slotNo == 0)
                    return; // swap full: the rest stays resident
                ulong swp = _arch.EncodeSwap(SwapDevice.Type, slotNo) | _arch.SwpExclusive;
                if ((pte & _arch.SoftDirty) != 0 && _k.Version.SwapKeepsSoftDirty)
                    swp |= _arch.SwpSoftDirty;
                if ((pte & _arch.UffdWp) != 0 && _arch.UffdWp != 0)
                    swp |= _arch.SwpUffdWp;
                ZapEntry(t, i, v, removeGuards: false);
                Pt.Set(t, i, swp);
                SwapEntries++;
            }
        }
    }

    /// <summary>Faults every page of the range in (MAP_POPULATE, MADV_POPULATE_*), as GUP would.</summary>
    private SysResult Populate(ulong start, ulong end, bool write)
    {
        for (ulong va = start; va < end; va += (ulong)_arch.PageSize)
        {
            var (r, _) = Translate(va, write, force: false);
            if (r == FaultResult.Oom)
                return Errno.ENOMEM;
            if (r != FaultResult.Ok)
                return Errno.EFAULT;
        }
        return SysResult.Success();
    }
}

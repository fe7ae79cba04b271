namespace CriuSharp.SimKernel.Mm;

/// <summary>
/// hugetlb mappings (mm/hugetlb.c, fs/hugetlbfs/inode.c). Every hugetlb VMA is backed by a
/// hugetlbfs file — the internal "/anon_hugepage" for MAP_HUGETLB, "memfd:NAME" for memfd_create
/// with MFD_HUGETLB, "SYSVkkkkkkkk" for SHM_HUGETLB — and mapped one huge page per PMD entry:
///
///   VMA [start, end), huge-aligned ──► PMD slot per huge page ──► head PFN of a pool page (or none,
///                                                                  or a uffd-wp marker)
///   shared: the page belongs to the file (file.HugePages[index]); private: to the mapping
///   (a read of a file page maps the file's page read-only until a write copies it)
///
/// Unlike THP a hugetlb page is never split: mmap lengths are rounded up to the huge page size,
/// and splits at an unaligned address (munmap, mprotect, uffd ranges) fail with EINVAL.
/// </summary>
public sealed partial class MmStruct
{
    /// <summary>mmap of a hugetlbfs file, or MAP_HUGETLB (hugetlb_file_setup + hugetlbfs_file_mmap).</summary>
    private SysResult HugetlbMmap(ulong addr, ulong len, Prot prot, MapFlags flags, SimFile? file, long offset,
                                  HugetlbPool pool, bool shared)
    {
        ulong hsz = pool.Size;
        if (!pool.Allocatable)
            return Errno.ENOMEM; // nothing of this size can be in the pool here
        ulong size = (len + hsz - 1) & ~(hsz - 1);
        if (size < len || size > _arch.TaskSize)
            return Errno.ENOMEM;
        if (((ulong)offset & (hsz - 1)) != 0)
            return Errno.EINVAL;
        bool fixedAny = (flags & (MapFlags.Fixed | MapFlags.FixedNoReplace)) != 0;
        ulong start;
        if (fixedAny)
        {
            if ((addr & (hsz - 1)) != 0)
                return Errno.EINVAL;
            if (addr + size > _arch.TaskSize || addr + size < addr)
                return Errno.ENOMEM;
            if ((flags & MapFlags.FixedNoReplace) != 0 && !RangeFree(addr, addr + size))
                return Errno.EEXIST;
            start = addr;
        }
        else
        {
            start = FindFreeArea(size, addr & ~(hsz - 1));
            if (start == 0)
                return Errno.ENOMEM;
        }

        file ??= _k.Hugetlb.CreateFile(pool, "/anon_hugepage", (long)size);
        bool noReserve = (flags & MapFlags.NoReserve) != 0;
        long first = offset / (long)hsz, count = (long)(size / hsz);
        HugetlbReservation? resv = null;
        if (shared)
        {
            // hugetlb_reserve_pages: a shared mapping reserves the file's pages not yet present or reserved.
            if (!noReserve)
            {
                var need = new List<long>();
                for (long i = first; i < first + count; i++)
                    if (!file.HugePages.ContainsKey(i) && !file.HugeReserved.Contains(i))
                        need.Add(i);
                if (!pool.Reserve(need.Count))
                    return Errno.ENOMEM;
                file.HugeReserved.UnionWith(need);
            }
        }
        else if (!noReserve)
        {
            if (!pool.Reserve(count))
                return Errno.ENOMEM;
            resv = new HugetlbReservation(pool);
            for (long i = first; i < first + count; i++)
                resv.Indexes.Add(i);
        }
        // hugetlbfs_file_mmap grows i_size to cover a writable mapping.
        if ((prot & Prot.Write) != 0 && file.Size < offset + (long)size)
            file.Size = offset + (long)size;

        if (fixedAny)
            DoMunmap(start, start + size);
        var vmFlags = ProtToVm(prot) | VmaFlags.MayRead | VmaFlags.MayWrite | VmaFlags.MayExec
                      | VmaFlags.HugeTlb | VmaFlags.DontExpand | NewVmaSoftDirty;
        if (shared)
            vmFlags |= VmaFlags.Shared | VmaFlags.MayShare;
        if (noReserve)
            vmFlags |= VmaFlags.NoReserve;
        if ((flags & MapFlags.Locked) != 0)
            vmFlags |= VmaFlags.Locked;
        var vma = new VmArea
        {
            Start = start,
            End = start + size,
            Flags = vmFlags,
            File = file,
            PgOff = offset >> _arch.PageShift,
            HugeResv = resv,
        };
        Insert(vma); // VM_DONTEXPAND: never merged
        if ((flags & (MapFlags.Populate | MapFlags.Locked)) != 0)
            for (ulong va = start; va < start + size; va += hsz)
                HandleFault(va, write: !shared && (prot & Prot.Write) != 0, force: false);
        return SysResult.Success((long)start);
    }

    private static HugetlbPool PoolOf(VmArea v) => v.File!.Hugetlb!;

    private long HugeIndex(VmArea v, ulong hugeBase) =>
        (v.PgOff + (long)((hugeBase - v.Start) >> _arch.PageShift)) / PoolOf(v).PagesPerHuge;

    /// <summary>
    /// EINVAL when a VMA would have to be split inside a huge page at <paramref name="addr"/>
    /// (hugetlb_vm_op_split): munmap, mprotect, madvise and userfaultfd ranges must be huge-aligned.
    /// </summary>
    internal bool HugetlbSplitRefused(ulong addr)
    {
        var v = Find(addr);
        return v is { IsHugetlb: true } && v.Start != addr && (addr & (PoolOf(v).Size - 1)) != 0;
    }

    /// <summary>hugetlb_fault: fills a huge page on first touch, resolves write-protection, copies on write for private mappings.</summary>
    private (FaultResult, long) HugetlbFault(VmArea vma, ulong va, bool write)
    {
        var pool = PoolOf(vma);
        ulong hb = va & ~(pool.Size - 1);
        var pmd = Pt.EnsurePmdTable(va);
        int slot = Pt.PmdIndex(va);
        long sub = (long)((va - hb) >> _arch.PageShift);
        long idx = HugeIndex(vma, hb);
        var f = vma.File!;
        ulong h = pmd.Huge[slot];
        if (h == 0 || _arch.IsMarker(h))
        {
            // hugetlb_no_page. There is no zero page: a read allocates too.
            bool marker = h != 0;
            long head;
            bool filePage;
            if (vma.IsShared)
            {
                if (!f.HugePages.TryGetValue(idx, out head))
                {
                    head = pool.Take(f.HugeReserved.Remove(idx));
                    if (head < 0)
                        return (FaultResult.Sigbus, -1);
                    f.HugePages[idx] = head;
                }
                filePage = true;
            }
            else if (f.HugePages.TryGetValue(idx, out long fileHead) && !write)
            {
                head = fileHead;
                filePage = true;
            }
            else
            {
                head = pool.Take(vma.HugeResv?.Consume(idx) == true);
                if (head < 0)
                    return (FaultResult.Sigbus, -1);
                if (f.HugePages.TryGetValue(idx, out long src))
                    for (int p = 0; p < pool.PagesPerHuge; p++)
                        _mem.Page(src + p).CopyTo(_mem.PageMut(head + p));
                filePage = false;
            }
            // make_huge_pte: writable (and dirty) for shared mappings and for a private write;
            // a private read maps the page read-only, the first write then reuses it.
            bool writable = vma.CanWrite && (vma.IsShared || (write && !filePage));
            ulong e = _arch.MakeHuge(head, writable, dirty: writable);
            if (marker && !write)
                e = _arch.WrProtect(e) | _arch.UffdWp; // a read keeps the range protected
            else if (marker)
                UffdWpEvent(vma, va);
            for (long p = head; p < head + pool.PagesPerHuge; p++)
                _mem.Map(p);
            pmd.Huge[slot] = e;
            return (FaultResult.Ok, head + sub);
        }
        if (_arch.IsProtNone(h))
            pmd.Huge[slot] = h = _arch.MkAccessible(h);
        long cur = _arch.Pfn(h);
        if (!write)
        {
            pmd.Huge[slot] = h | _arch.Accessed;
            return (FaultResult.Ok, cur + sub);
        }
        if (_arch.IsWritable(h))
        {
            pmd.Huge[slot] = h | _arch.Accessed | _arch.Dirty;
            return (FaultResult.Ok, cur + sub);
        }
        // hugetlb_wp: userfaultfd write-protection first (async mode resolves it for the whole huge page).
        WpFaults++;
        if (Current is { } wpc)
            wpc.WpFlt++;
        if (_arch.UffdWp != 0 && (h & _arch.UffdWp) != 0)
        {
            h &= ~_arch.UffdWp;
            UffdWpEvent(vma, va);
        }
        bool isFilePage = f.HugePages.TryGetValue(idx, out long fh) && fh == cur;
        if (vma.IsShared || (!isFilePage && _mem.MapCount(cur) == 1))
        {
            ulong ne = _arch.MkDirty(h);
            pmd.Huge[slot] = vma.CanWrite ? _arch.MkWrite(ne) : ne;
            return (FaultResult.Ok, cur + sub);
        }
        long copy = pool.Take(vma.HugeResv?.Consume(idx) == true);
        if (copy < 0)
            return (FaultResult.Sigbus, -1); // the child of a fork gets SIGBUS when the pool is empty
        for (int p = 0; p < pool.PagesPerHuge; p++)
            _mem.Page(cur + p).CopyTo(_mem.PageMut(copy + p));
        UnmapHugePage(vma, cur, idx);
        for (long p = copy; p < copy + pool.PagesPerHuge; p++)
            _mem.Map(p);
        pmd.Huge[slot] = _arch.MakeHuge(copy, vma.CanWrite, dirty: true);
        return (FaultResult.Ok, copy + sub);
    }

    /// <summary>Drops one mapping of a huge page; a private page nobody maps any more goes back to the pool.</summary>
    private void UnmapHugePage(VmArea vma, long head, long idx)
    {
        var pool = PoolOf(vma);
        for (long p = head; p < head + pool.PagesPerHuge; p++)
            _mem.Unmap(p);
        bool filePage = vma.File!.HugePages.TryGetValue(idx, out long fh) && fh == head;
        if (!filePage && _mem.MapCount(head) == 0)
            pool.Put(head);
    }

    /// <summary>Removes the entries of [start, end) of a hugetlb VMA (whole huge pages).</summary>
    private void ZapHugetlbRange(VmArea vma, ulong start, ulong end)
    {
        ulong hsz = PoolOf(vma).Size;
        for (ulong hb = start & ~(hsz - 1); hb < end; hb += hsz)
        {
            var pmd = Pt.PmdTableFor(hb);
            if (pmd is null)
                continue;
            int slot = Pt.PmdIndex(hb);
            ulong h = pmd.Huge[slot];
            if (h == 0)
                continue;
            if (_arch.IsPresent(h))
                UnmapHugePage(vma, _arch.Pfn(h), HugeIndex(vma, hb));
            pmd.Huge[slot] = 0;
        }
    }

    /// <summary>After a hugetlb VMA piece is gone: its private reservations return, an unreferenced hugetlbfs inode is evicted.</summary>
    private void ReleaseHugetlbVma(VmArea v)
    {
        if (v.HugeResv is { } r)
        {
            long ph = PoolOf(v).PagesPerHuge;
            r.Release(v.PgOff / ph, (v.PgOff + (long)(v.Length >> _arch.PageShift)) / ph);
        }
        _k.MaybeEvictHugetlb(v.File!);
    }

    /// <summary>fork of a private hugetlb VMA (copy_hugetlb_page_range): present pages are shared copy-on-write, markers are dropped.</summary>
    private void CopyHugetlbEntries(MmStruct c, VmArea v, VmArea cv)
    {
        var pool = PoolOf(v);
        cv.HugeResv = null; // the child has no reservation: its copy-on-write faults may get SIGBUS
        for (ulong hb = v.Start; hb < v.End; hb += pool.Size)
        {
            var pmd = Pt.PmdTableFor(hb);
            int slot = Pt.PmdIndex(hb);
            if (pmd is null || pmd.Huge[slot] is var h && !_arch.IsPresent(h))
                continue;
            h = _arch.WrProtect(pmd.Huge[slot]);
            pmd.Huge[slot] = h;
            long head = _arch.Pfn(h);
            for (long p = head; p < head + pool.PagesPerHuge; p++)
                _mem.Map(p);
            c.Pt.EnsurePmdTable(hb).Huge[slot] = _arch.UffdWp != 0 ? h & ~_arch.UffdWp : h;
        }
    }

    /// <summary>uffd-wp of whole huge pages (hugetlb_change_protection): markers on empty entries, always.</summary>
    private void SetUffdWpHugetlb(VmArea v, ulong start, ulong end, bool wp)
    {
        ulong hsz = PoolOf(v).Size;
        for (ulong hb = start; hb < end; hb += hsz)
        {
            var pmd = wp ? Pt.EnsurePmdTable(hb) : Pt.PmdTableFor(hb);
            if (pmd is null)
                continue;
            int slot = Pt.PmdIndex(hb);
            ulong h = pmd.Huge[slot];
            if (h == 0)
            {
                if (wp)
                    pmd.Huge[slot] = _arch.MakeMarker(Arch.ArchProfile.MarkerUffdWp);
            }
            else if (_arch.IsMarker(h))
            {
                if (!wp)
                    pmd.Huge[slot] = 0;
            }
            else
                pmd.Huge[slot] = wp ? _arch.WrProtect(h) | _arch.UffdWp : h & ~_arch.UffdWp;
        }
    }

    /// <summary>Write-protects one whole huge page for PAGEMAP_SCAN (make_uffd_wp_huge_pte).</summary>
    internal void ProtectHugetlbEntry(PmdTable pmd, int slot)
    {
        ulong h = pmd.Huge[slot];
        if (h == 0)
            pmd.Huge[slot] = _arch.MakeMarker(Arch.ArchProfile.MarkerUffdWp);
        else if (_arch.IsPresent(h))
            pmd.Huge[slot] = _arch.WrProtect(h) | _arch.UffdWp;
    }

    /// <summary>Whether the page at <paramref name="head"/> mapped at <paramref name="hugeBase"/> is the file's (shared or not yet copied), not anonymous.</summary>
    internal bool HugetlbIsFilePage(VmArea v, ulong hugeBase, long head) =>
        v.File!.HugePages.TryGetValue(HugeIndex(v, hugeBase), out long fh) && fh == head;
}

using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Proc;

/// <summary>
/// Builds <c>/proc/PID/pagemap</c> entries. One pass walks VMAs and page tables in address order;
/// each entry is derived from the raw page-table entry, the frame's kind and map count, and the
/// VMA's VM_SOFTDIRTY flag (rule R1).
/// </summary>
public static class Pagemap
{
    /// <summary>The entry for a page with no mapping information, per layout.</summary>
    public static ulong HoleValue(PagemapLayout layout, int pageShift) =>
        layout == PagemapLayout.V1 ? (ulong)pageShift << PagemapBits.V1PageShiftBit : 0;

    /// <summary>
    /// Fills <paramref name="dst"/> with the entries of consecutive pages starting at <paramref name="startVa"/>.
    /// <paramref name="showPfn"/> is false for openers without CAP_SYS_ADMIN (PFN and swap fields zeroed).
    /// </summary>
    public static void Read(MmStruct mm, ulong startVa, Span<ulong> dst, PagemapLayout layout, bool showPfn = true)
    {
        var arch = mm.Kernel.Arch;
        var mem = mm.Kernel.Memory;
        ulong hole = HoleValue(layout, arch.PageShift);
        ulong ps = (ulong)arch.PageSize;
        bool sdSupported = mm.Kernel.SoftDirtySupported && layout != PagemapLayout.V1;
        bool modern = layout == PagemapLayout.Modern;
        ulong v1Shift = layout == PagemapLayout.V1 ? hole : 0;
        ulong pfnMask = showPfn ? PagemapBits.PfnMask : 0;
        var vmas = mm.Vmas;
        int n = dst.Length;
        int k = 0;
        ulong va = startVa;
        int vi = mm.FirstEndingAbove(va);
        while (k < n)
        {
            if (vi >= vmas.Count || vmas[vi].Start > va)
            {
                ulong stop = vi < vmas.Count ? vmas[vi].Start : ulong.MaxValue;
                while (k < n && va < stop)
                {
                    dst[k++] = hole;
                    va += ps;
                }
                continue;
            }
            var v = vmas[vi];
            ulong vmaSd = sdSupported && v.SoftDirtyFlag ? PagemapBits.SoftDirty : 0;
            while (k < n && va < v.End)
            {
                ulong pmdEnd = (va & ~(arch.HugePageSize - 1)) + arch.HugePageSize;
                ulong chunkEnd = Math.Min(v.End, pmdEnd);
                int count = (int)Math.Min((ulong)(n - k), (chunkEnd - va) >> arch.PageShift);
                var pmd = mm.Pt.PmdTableFor(va);
                int slot = mm.Pt.PmdIndex(va);
                var span = dst.Slice(k, count);
                if (v.IsHugetlb)
                    HugetlbEntries(mm, v, pmd?.Huge[slot] ?? 0, va, span, vmaSd | v1Shift, hole | vmaSd, modern, pfnMask);
                else if (pmd is not null && pmd.Huge[slot] is var h && h != 0)
                {
                    long head = arch.Pfn(h);
                    bool zero = mem.Kind(head) == PhysicalMemory.FrameKind.Zero;
                    ulong flags = PagemapBits.Present | v1Shift
                                  | ((h & arch.SoftDirty) != 0 && sdSupported ? PagemapBits.SoftDirty : 0) | vmaSd
                                  // the huge zero page reads as a file page (observed quirk)
                                  | (zero ? PagemapBits.File : 0)
                                  | (modern && arch.UffdWp != 0 && (h & arch.UffdWp) != 0 ? PagemapBits.UffdWp : 0);
                    long sub = (long)(va >> arch.PageShift) & (arch.PagesPerHuge - 1);
                    for (int j = 0; j < count; j++)
                    {
                        long pfn = head + sub + j;
                        ulong f = flags;
                        if (modern && !zero && mem.MapCount(pfn) == 1)
                            f |= PagemapBits.Exclusive;
                        span[j] = f | ((ulong)pfn & pfnMask);
                    }
                }
                else if (pmd?.Pte[slot] is { } t)
                {
                    int i0 = mm.Pt.PteIndex(va);
                    var e = t.E;
                    for (int j = 0; j < count; j++)
                    {
                        ulong x = e[i0 + j];
                        span[j] = x == 0 ? (hole | vmaSd) : Entry(arch, mem, v, x, vmaSd, sdSupported, modern, v1Shift, pfnMask);
                    }
                }
                else
                    span.Fill(hole | vmaSd);
                k += count;
                va += (ulong)count << arch.PageShift;
            }
            vi++;
        }
    }

    /// <summary>
    /// pagemap_hugetlb_range: soft-dirty comes from VM_SOFTDIRTY only (the huge entry's own bit is
    /// never reported here), PM_FILE for a page of the file, PM_MMAP_EXCLUSIVE when mapped once,
    /// uffd-wp from the entry or a marker (which reads as uffd-wp only, not swapped).
    /// </summary>
    private static void HugetlbEntries(MmStruct mm, VmArea v, ulong h, ulong va, Span<ulong> span, ulong baseFlags,
                                       ulong holeFlags, bool modern, ulong pfnMask)
    {
        if (h == 0 || (!modern && !mm.Kernel.Arch.IsPresent(h)))
        {
            span.Fill(holeFlags);
            return;
        }
        var arch = mm.Kernel.Arch;
        ulong flags = baseFlags;
        long frame = 0;
        if (h != 0 && arch.IsPresent(h))
        {
            long head = arch.Pfn(h);
            ulong hb = va & ~(v.File!.Hugetlb!.Size - 1);
            flags |= PagemapBits.Present;
            if (mm.HugetlbIsFilePage(v, hb, head))
                flags |= PagemapBits.File;
            if (modern && mm.Kernel.Memory.MapCount(head) == 1)
                flags |= PagemapBits.Exclusive;
            if (modern && arch.UffdWp != 0 && (h & arch.UffdWp) != 0)
                flags |= PagemapBits.UffdWp;
            frame = head + (long)((va - hb) >> arch.PageShift);
        }
        else if (arch.IsMarker(h))
            flags = holeFlags | PagemapBits.UffdWp;
        for (int j = 0; j < span.Length; j++)
            span[j] = flags | (frame == 0 ? 0 : ((ulong)(frame + j) & pfnMask));
    }

    private static ulong Entry(ArchProfile arch, PhysicalMemory mem, VmArea v, ulong x, ulong vmaSd,
                               bool sdSupported, bool modern, ulong v1Shift, ulong pfnMask)
    {
        if (arch.IsPresent(x))
        {
            long pfn = arch.Pfn(x);
            var kind = mem.Kind(pfn);
            ulong f = PagemapBits.Present | v1Shift | vmaSd | ((ulong)pfn & pfnMask);
            if (sdSupported && (x & arch.SoftDirty) != 0)
                f |= PagemapBits.SoftDirty;
            if (kind is PhysicalMemory.FrameKind.PageCache or PhysicalMemory.FrameKind.Reserved)
                f |= PagemapBits.File;
            if (modern)
            {
                if (kind != PhysicalMemory.FrameKind.Zero && mem.MapCount(pfn) == 1)
                    f |= PagemapBits.Exclusive;
                if (arch.UffdWp != 0 && (x & arch.UffdWp) != 0)
                    f |= PagemapBits.UffdWp;
            }
            return f;
        }
        // Swap entries and pte markers: "swapped", with type and offset in the frame field.
        ulong type = (ulong)arch.SwapType(x);
        ulong offset = arch.SwapOffset(x);
        ulong r = PagemapBits.Swap | v1Shift | vmaSd | ((type | (offset << PagemapBits.SwapTypeBits)) & pfnMask);
        if (arch.IsMarker(x))
        {
            if (modern && (offset & ArchProfile.MarkerUffdWp) != 0) r |= PagemapBits.UffdWp;
            if (modern && (offset & ArchProfile.MarkerGuard) != 0) r |= PagemapBits.Guard;
            return r;
        }
        if (sdSupported && (x & arch.SwpSoftDirty) != 0)
            r |= PagemapBits.SoftDirty;
        if (modern && arch.SwpUffdWp != 0 && (x & arch.SwpUffdWp) != 0)
            r |= PagemapBits.UffdWp;
        if (v.IsShmem)
            r |= PagemapBits.File;
        return r;
    }
}

namespace CriuSharp.SimKernel.Mm;

/// <summary>fork's copy of an address space, and teardown at exit.</summary>
public sealed partial class MmStruct
{
    /// <summary>
    /// dup_mm: VMAs are copied with their flags (VM_SOFTDIRTY included, S10.6); private anonymous
    /// pages become shared copy-on-write, both sides write-protected with their soft-dirty bits kept
    /// (K5). Shared mappings are not copied page by page: the child faults them in. The child is
    /// not registered with the parent's userfaultfd, so uffd-wp state is dropped in the child.
    /// </summary>
    internal MmStruct Fork()
    {
        var c = new MmStruct(_k)
        {
            StartCode = StartCode, EndCode = EndCode, StartData = StartData, EndData = EndData,
            StartBrk = StartBrk, Brk = Brk, StartStack = StartStack,
            ArgStart = ArgStart, ArgEnd = ArgEnd, EnvStart = EnvStart, EnvEnd = EnvEnd,
            ExeFile = ExeFile,
        };
        foreach (var v in _vmas)
        {
            if ((v.Flags & VmaFlags.DontCopy) != 0)
                continue;
            var cv = v.Clone();
            cv.Uffd = null;
            cv.Flags &= ~(VmaFlags.UffdWp | VmaFlags.UffdMissing);
            c._vmas.Add(cv);
            if (v.IsShared || (v.Flags & VmaFlags.PfnMap) != 0)
                continue;
            if ((v.Flags & VmaFlags.WipeOnFork) != 0)
                continue;
            if (v.IsHugetlb)
            {
                CopyHugetlbEntries(c, v, cv);
                continue;
            }
            CopyEntries(c, v, cv);
        }
        c.HiwaterRss = c.Rss;
        return c;
    }

    private void CopyEntries(MmStruct c, VmArea v, VmArea cv)
    {
        ulong hsz = _arch.HugePageSize;
        foreach (var (baseVa, pmd, slot) in Pt.Slots(v.Start, v.End))
        {
            if (pmd.Huge[slot] != 0)
            {
                ulong h = _arch.WrProtect(pmd.Huge[slot]);
                pmd.Huge[slot] = h;
                long head = _arch.Pfn(h);
                if (_mem.Kind(head) != PhysicalMemory.FrameKind.Zero)
                {
                    for (long p = head; p < head + _arch.PagesPerHuge; p++)
                        _mem.Map(p);
                    c.CountIn(head, cv, _arch.PagesPerHuge);
                }
                c.Pt.EnsurePmdTable(baseVa).Huge[slot] = _arch.UffdWp != 0 ? h & ~_arch.UffdWp : h;
                continue;
            }
            var t = pmd.Pte[slot];
            if (t is null || t.Used == 0)
                continue;
            PteTable? ct = null;
            ulong s = Math.Max(v.Start, baseVa), end = Math.Min(v.End, baseVa + hsz);
            for (ulong va = s; va < end; va += (ulong)_arch.PageSize)
            {
                int i = Pt.PteIndex(va);
                ulong e = t.E[i];
                if (e == 0)
                    continue;
                ulong ce;
                if (_arch.IsPresent(e))
                {
                    long pfn = _arch.Pfn(e);
                    if (_mem.Kind(pfn) == PhysicalMemory.FrameKind.Anon)
                    {
                        e = _arch.WrProtect(e);
                        Pt.Set(t, i, e);
                    }
                    ce = _arch.UffdWp != 0 ? e & ~_arch.UffdWp : e;
                    if (_mem.Kind(pfn) != PhysicalMemory.FrameKind.Zero)
                    {
                        _mem.Map(pfn);
                        c.CountIn(pfn, cv, 1);
                    }
                }
                else if (_arch.IsMarker(e))
                {
                    if ((_arch.SwapOffset(e) & Arch.ArchProfile.MarkerGuard) == 0)
                        continue; // uffd-wp markers belong to the parent's registration
                    ce = e;
                }
                else
                {
                    _k.Swap.Duplicate(_arch.SwapOffset(e));
                    e &= ~_arch.SwpExclusive;
                    Pt.Set(t, i, e);
                    ce = _arch.SwpUffdWp != 0 ? e & ~_arch.SwpUffdWp : e;
                    c.SwapEntries++;
                }
                ct ??= c.Pt.EnsurePteTable(va);
                c.Pt.Set(ct, i, ce);
            }
        }
    }

    /// <summary>exit_mmap: every mapping and page table goes; frames and swap slots are released.</summary>
    internal void Teardown()
    {
        var vmas = _vmas.ToList();
        foreach (var v in vmas)
            ZapRange(v, v.Start, v.End, removeGuards: true);
        _vmas.Clear();
        Dead = true;
        foreach (var v in vmas)
            if (v.IsHugetlb)
                ReleaseHugetlbVma(v);
    }

    /// <summary>Clears the peak-RSS mark (clear_refs 5).</summary>
    internal void ResetHiwater() => HiwaterRss = Rss;
}

using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Proc;

/// <summary>
/// <c>/proc/PID/clear_refs</c>: parsing exactly as fs/proc/task_mmu.c does it (at most 12 bytes
/// copied, whitespace stripped, base-10 with optional '+', stop at NUL) and the five commands.
/// </summary>
public static class ClearRefs
{
    /// <summary>The largest count the kernel copies from the user buffer (its buffer is 13 bytes).</summary>
    public const int MaxBytes = 12;

    /// <summary>Handles a write; returns the byte count the write(2) call would return.</summary>
    public static SysResult Write(SimTask task, ReadOnlySpan<byte> data, int clearRefsMax)
    {
        int count = Math.Min(data.Length, MaxBytes);
        var r = Parse(data[..count], clearRefsMax);
        if (!r.Ok)
            return r;
        if (task.State is TaskState.Dead)
            return Errno.ESRCH;
        if (task.Mm.Dead)
            return SysResult.Success(count); // no mm: accepted, no effect
        Apply(task.Mm, (ClearRefsType)r.Value);
        return SysResult.Success(count);
    }

    /// <summary>kstrtoint on the stripped text: returns the command number, EINVAL or ERANGE.</summary>
    public static SysResult Parse(ReadOnlySpan<byte> data, int clearRefsMax)
    {
        int nul = data.IndexOf((byte)0);
        if (nul >= 0)
            data = data[..nul];
        data = Trim(data);
        if (data.Length == 0)
            return Errno.EINVAL;
        int i = 0;
        if (data[0] == '+')
            i = 1;
        if (i == data.Length)
            return Errno.EINVAL;
        long value = 0;
        for (; i < data.Length; i++)
        {
            byte c = data[i];
            if (c < '0' || c > '9')
                return Errno.EINVAL;
            value = value * 10 + (c - '0');
            if (value > int.MaxValue)
                return Errno.ERANGE;
        }
        if (value < (int)ClearRefsType.All || value > clearRefsMax)
            return Errno.EINVAL;
        return SysResult.Success(value);
    }

    private static ReadOnlySpan<byte> Trim(ReadOnlySpan<byte> s)
    {
        static bool Space(byte b) => b is (byte)' ' or (byte)'\n' or (byte)'\t' or (byte)'\r' or 0x0b or 0x0c;
        int a = 0, z = s.Length;
        while (a < z && Space(s[a])) a++;
        while (z > a && Space(s[z - 1])) z--;
        return s[a..z];
    }

    /// <summary>Runs one command over the whole address space.</summary>
    public static void Apply(MmStruct mm, ClearRefsType type)
    {
        if (type == ClearRefsType.MmHiwaterRss)
        {
            mm.ResetHiwater();
            return;
        }
        var arch = mm.Kernel.Arch;
        bool softDirty = type == ClearRefsType.SoftDirty;
        if (softDirty && !mm.Kernel.SoftDirtySupported)
            return; // accepted and walked, but nothing changes (without CONFIG_MEM_SOFT_DIRTY, clear_refs_write() accepts 4 and clears nothing)
        foreach (var v in mm.Vmas)
        {
            if (type == ClearRefsType.Anon && v.File is not null) continue;
            if (type == ClearRefsType.Mapped && v.File is null) continue;
            if (softDirty)
                v.Flags &= ~VmaFlags.SoftDirty; // C1a
            if ((v.Flags & VmaFlags.PfnMap) != 0)
                continue;
            // clear_refs_walk_ops has no hugetlb_entry: hugetlb entries are never walked, whatever the
            // command (soft-dirty clears only VM_SOFTDIRTY above; the huge entries keep their bits).
            if ((v.Flags & VmaFlags.HugeTlb) != 0)
                continue;
            foreach (var (baseVa, pmd, slot) in mm.Pt.Slots(v.Start, v.End))
            {
                if (pmd.Huge[slot] is var h && h != 0)
                {
                    pmd.Huge[slot] = softDirty ? arch.WrProtect(h) & ~arch.SoftDirty : h & ~arch.Accessed;
                    continue;
                }
                var t = pmd.Pte[slot];
                if (t is null || t.Used == 0)
                    continue;
                int from = v.Start > baseVa ? mm.Pt.PteIndex(v.Start) : 0;
                int to = v.End < baseVa + arch.HugePageSize ? mm.Pt.PteIndex(v.End) : arch.PtrsPerTable;
                if (softDirty)
                    ClearSoftDirty(mm, v, t, from, to);
                else
                    for (int i = from; i < to; i++)
                        if (arch.IsPresent(t.E[i]))
                            t.E[i] &= ~arch.Accessed;
            }
        }
    }

    /// <summary>
    /// C1b for one page table: present entries are write-protected and lose soft-dirty (dirty and
    /// accessed kept); swap entries lose their swap soft-dirty bit. A writable private page of a
    /// process that ever pinned pages is left alone when it may be pinned (C2).
    /// </summary>
    private static void ClearSoftDirty(MmStruct mm, VmArea v, PteTable t, int from, int to)
    {
        var arch = mm.Kernel.Arch;
        ulong presentTest = arch.PresentTest;
        ulong clearPresent = arch.Write | arch.SoftDirty, setPresent = arch.RdOnly;
        ulong swpSd = arch.SwpSoftDirty;
        bool checkPins = mm.HasPinned && !v.IsShared && (v.Flags & VmaFlags.MayWrite) != 0;
        var e = t.E;
        // Neither the uffd-wp state nor the used count changes here, and afterwards no entry in the
        // range is soft-dirty (markers never are), so entries are rewritten in one tight loop and the
        // soft-dirty bitmap is cleared in bulk; pinned pages that stay dirty are put back.
        for (int i = from; i < to; i++)
        {
            ulong x = e[i];
            if (x == 0)
                continue;
            if ((x & presentTest) != 0)
            {
                if (checkPins && arch.IsWritable(x) && mm.PinnedPfns.Contains(arch.Pfn(x)))
                    continue;
                e[i] = (x & ~clearPresent) | setPresent;
            }
            else if (!arch.IsMarker(x))
                e[i] = x & ~swpSd;
        }
        ClearBits(t.SoftDirty, from, to);
        if (checkPins)
            for (int i = from; i < to; i++)
                if (arch.EntrySoftDirty(e[i]))
                    t.SoftDirty[i >> 6] |= 1UL << (i & 63);
    }

    private static void ClearBits(ulong[] bitmap, int from, int to)
    {
        for (int i = from; i < to;)
        {
            int w = i >> 6, b = i & 63;
            int take = Math.Min(64 - b, to - i);
            ulong mask = (take == 64 ? ulong.MaxValue : (1UL << take) - 1) << b;
            bitmap[w] &= ~mask;
            i += take;
        }
    }
}

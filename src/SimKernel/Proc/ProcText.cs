using System.Globalization;
using System.Text;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Proc;

/// <summary>The text files of /proc/PID: maps, smaps and status, formatted as fs/proc does.</summary>
public static class ProcText
{
    private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>The name column: file path, [heap], [stack], special names, or shared anonymous memory.</summary>
    public static string? VmaName(MmStruct mm, VmArea v)
    {
        if (v.SpecialName is not null) return v.SpecialName;
        if (v.File is { IsShmem: true }) return "/dev/zero (deleted)";
        if (v.File is { Unlinked: true }) return v.File.Path + " (deleted)";
        if (v.File is not null) return v.File.Path;
        if (v.Start <= mm.Brk && v.End >= mm.StartBrk && mm.Brk > mm.StartBrk) return "[heap]";
        if (v.Start <= mm.StartStack && v.End >= mm.StartStack) return "[stack]";
        return null;
    }

    private static void Header(StringBuilder sb, MmStruct mm, VmArea v)
    {
        int start = sb.Length;
        var arch = mm.Kernel.Arch;
        var (maj, min) = v.File?.Device ?? (0, 0);
        ulong ino = v.File?.Inode ?? 0;
        ulong pgoff = v.File is null ? 0 : (ulong)v.PgOff << arch.PageShift;
        sb.Append(v.Start.ToString("x8", Inv)).Append('-').Append(v.End.ToString("x8", Inv)).Append(' ')
          .Append(v.CanRead ? 'r' : '-').Append(v.CanWrite ? 'w' : '-').Append(v.CanExec ? 'x' : '-')
          .Append((v.Flags & VmaFlags.MayShare) != 0 ? 's' : 'p').Append(' ')
          .Append(pgoff.ToString("x8", Inv)).Append(' ')
          .Append(maj.ToString("x2", Inv)).Append(':').Append(min.ToString("x2", Inv)).Append(' ')
          .Append(ino.ToString(Inv)).Append(' ');
        string? name = VmaName(mm, v);
        if (name is not null)
        {
            // seq_pad: the name starts after the header is padded to 25 + 6 * sizeof(void *) - 1 columns.
            int pad = 72 - (sb.Length - start);
            if (pad > 0) sb.Append(' ', pad);
            sb.Append(' ').Append(name);
        }
        sb.Append('\n');
    }

    public static string Maps(MmStruct mm)
    {
        var sb = new StringBuilder();
        foreach (var v in mm.Vmas)
            Header(sb, mm, v);
        if (mm.Kernel.Arch.Kind == Arch.ArchProfile.Family.X86_64 && !mm.Dead)
            sb.Append("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n");
        return sb.ToString();
    }

    /// <summary>Per-VMA page statistics, computed from the page tables as smaps_pte_entry does.</summary>
    public readonly record struct VmaStats(long Rss, long Pss, long SharedClean, long SharedDirty, long PrivateClean,
        long PrivateDirty, long Referenced, long Anonymous, long AnonHuge, long Swap);

    public static VmaStats Stats(MmStruct mm, VmArea v)
    {
        if (v.IsHugetlb)
            return default; // hugetlb pages are not RSS: smaps shows them as Shared/Private_Hugetlb

        var arch = mm.Kernel.Arch;
        var mem = mm.Kernel.Memory;
        long ps = arch.PageSize;
        long rss = 0, pss = 0, sc = 0, sdirty = 0, pc = 0, pd = 0, refd = 0, anon = 0, anonHuge = 0, swap = 0;
        foreach (var (baseVa, pmd, slot) in mm.Pt.Slots(v.Start, v.End))
        {
            if (pmd.Huge[slot] is var h && h != 0)
            {
                long head = arch.Pfn(h);
                if (mem.Kind(head) == PhysicalMemory.FrameKind.Zero)
                    continue;
                long size = ps * arch.PagesPerHuge;
                rss += size;
                bool dirty = (h & arch.Dirty) != 0;
                int mc = mem.MapCount(head);
                pss += size / Math.Max(1, mc);
                if (mc > 1) { if (dirty) sdirty += size; else sc += size; }
                else { if (dirty) pd += size; else pc += size; }
                if ((h & arch.Accessed) != 0) refd += size;
                anon += size;
                anonHuge += size;
                continue;
            }
            var t = pmd.Pte[slot];
            if (t is null || t.Used == 0)
                continue;
            ulong s = Math.Max(v.Start, baseVa), e = Math.Min(v.End, baseVa + arch.HugePageSize);
            for (ulong va = s; va < e; va += (ulong)ps)
            {
                ulong x = t.E[mm.Pt.PteIndex(va)];
                if (x == 0) continue;
                if (!arch.IsPresent(x))
                {
                    if (!arch.IsMarker(x)) swap += ps;
                    continue;
                }
                long pfn = arch.Pfn(x);
                var kind = mem.Kind(pfn);
                if (kind == PhysicalMemory.FrameKind.Zero)
                    continue;
                rss += ps;
                int mc = Math.Max(1, mem.MapCount(pfn));
                pss += ps / mc;
                bool dirty = (x & arch.Dirty) != 0;
                if (mc > 1) { if (dirty) sdirty += ps; else sc += ps; }
                else { if (dirty) pd += ps; else pc += ps; }
                if ((x & arch.Accessed) != 0) refd += ps;
                if (kind == PhysicalMemory.FrameKind.Anon) anon += ps;
            }
        }
        return new VmaStats(rss, pss, sc, sdirty, pc, pd, refd, anon, anonHuge, swap);
    }

    public static string Smaps(MmStruct mm)
    {
        var sb = new StringBuilder();
        var arch = mm.Kernel.Arch;
        long kps = arch.PageSize / 1024;
        foreach (var v in mm.Vmas)
        {
            Header(sb, mm, v);
            var st = Stats(mm, v);
            // Every value is right-aligned to end at column 24, as task_mmu.c's SEQ_PUT_DEC leaves it.
            void Kb(string key, long bytes) => Col24(sb, key, (bytes / 1024).ToString(Inv)).Append(" kB\n");
            Kb("Size", (long)v.Length);
            long vps = v.IsHugetlb ? (long)v.File!.Hugetlb!.Size : kps * 1024;
            Kb("KernelPageSize", vps);
            Kb("MMUPageSize", vps);
            var (sharedHuge, privateHuge) = HugetlbUsage(mm, v);
            Kb("Rss", st.Rss);
            Kb("Pss", st.Pss);
            Kb("Pss_Dirty", st.SharedDirty + st.PrivateDirty);
            Kb("Shared_Clean", st.SharedClean);
            Kb("Shared_Dirty", st.SharedDirty);
            Kb("Private_Clean", st.PrivateClean);
            Kb("Private_Dirty", st.PrivateDirty);
            Kb("Referenced", st.Referenced);
            Kb("Anonymous", st.Anonymous);
            Kb("KSM", 0);
            Kb("LazyFree", 0);
            Kb("AnonHugePages", st.AnonHuge);
            Kb("ShmemPmdMapped", 0);
            Kb("FilePmdMapped", 0);
            Kb("Shared_Hugetlb", sharedHuge);
            Kb("Private_Hugetlb", privateHuge);
            Kb("Swap", st.Swap);
            Kb("SwapPss", st.Swap);
            Kb("Locked", (v.Flags & VmaFlags.Locked) != 0 ? st.Rss : 0);
            bool thpEligible = v.File is null && !v.IsShared && (v.Flags & VmaFlags.NoHugePage) == 0
                && (mm.Kernel.ThpMode == ThpMode.Always || (mm.Kernel.ThpMode == ThpMode.Madvise && (v.Flags & VmaFlags.HugePage) != 0));
            Col24(sb, "THPeligible", thpEligible ? "1" : "0").Append('\n');
            sb.Append("VmFlags: ").Append(VmaFlagNames.Format(v.Flags)).Append('\n');
        }
        return sb.ToString();
    }

    /// <summary>smaps_hugetlb_range: each mapped huge page counts as shared when mapped more than once, else private.</summary>
    public static (long Shared, long Private) HugetlbUsage(MmStruct mm, VmArea v)
    {
        if (!v.IsHugetlb)
            return (0, 0);
        var arch = mm.Kernel.Arch;
        ulong hsz = v.File!.Hugetlb!.Size;
        long shared = 0, priv = 0;
        for (ulong hb = v.Start; hb < v.End; hb += hsz)
        {
            var pmd = mm.Pt.PmdTableFor(hb);
            ulong h = pmd?.Huge[mm.Pt.PmdIndex(hb)] ?? 0;
            if (h == 0 || !arch.IsPresent(h))
                continue;
            if (mm.Kernel.Memory.MapCount(arch.Pfn(h)) > 1) shared += (long)hsz; else priv += (long)hsz;
        }
        return (shared, priv);
    }

    private static StringBuilder Col24(StringBuilder sb, string key, string value) =>
        sb.Append(key).Append(':').Append(' ', Math.Max(1, 24 - key.Length - 1 - value.Length)).Append(value);

    public static string Status(SimTask task)
    {
        var mm = task.Mm;
        long kps = mm.Kernel.Arch.PageSize / 1024;
        char state = task.State switch
        {
            TaskState.Running => 'R',
            TaskState.Frozen => 'S',
            TaskState.Stopped => 'T',
            TaskState.Zombie => 'Z',
            _ => 'X',
        };
        string stateName = task.State switch
        {
            TaskState.Running => "R (running)",
            TaskState.Frozen => "S (sleeping)",
            TaskState.Stopped => "T (stopped)",
            TaskState.Zombie => "Z (zombie)",
            _ => "X (dead)",
        };
        _ = state;
        var sb = new StringBuilder();
        sb.Append("Name:\t").Append(task.Comm).Append('\n');
        sb.Append("State:\t").Append(stateName).Append('\n');
        sb.Append("Tgid:\t").Append(task.Tgid).Append('\n');
        sb.Append("Pid:\t").Append(task.Pid).Append('\n');
        sb.Append("PPid:\t").Append(task.Ppid).Append('\n');
        sb.Append("Threads:\t").Append(Math.Max(1, task.Kernel.Threads(task.Tgid).Count).ToString(Inv)).Append('\n');
        if (!mm.Dead)
        {
            void Kb(string key, long pages) => sb.Append(key).Append(":\t").Append((pages * kps).ToString(Inv).PadLeft(8)).Append(" kB\n");
            Kb("VmPeak", (long)mm.TotalVm);
            Kb("VmSize", (long)mm.TotalVm);
            Kb("VmHWM", mm.HiwaterRss);
            Kb("VmRSS", mm.Rss);
            Kb("RssAnon", mm.RssAnon);
            Kb("RssFile", mm.RssFile);
            Kb("RssShmem", mm.RssShmem);
            Kb("VmSwap", mm.SwapEntries);
            long huge = 0;
            foreach (var v in mm.Vmas)
                if (v.IsHugetlb)
                {
                    var (sh, pr) = HugetlbUsage(mm, v);
                    huge += sh + pr;
                }
            sb.Append("HugetlbPages:\t").Append((huge / 1024).ToString(Inv).PadLeft(8)).Append(" kB\n");
        }
        return sb.ToString();
    }

    /// <summary>
    /// /proc/PID/stat as do_task_stat prints it. Fields a simulated task has no notion of are 0;
    /// 22 (start time) is in USER_HZ ticks; 26–28 and 45–51 are the mm layout fields a checkpoint
    /// tool reads to restore them with prctl(PR_SET_MM).
    /// </summary>
    public static string Stat(SimTask task)
    {
        var mm = task.Mm;
        bool live = !mm.Dead;
        char state = task.State switch { TaskState.Running => 'R', TaskState.Frozen => 'S', TaskState.Stopped => 'T', TaskState.Zombie => 'Z', _ => 'X' };
        ulong ticks = task.StartTimeNs / 10_000_000UL;
        ulong vsize = live ? mm.TotalVm << mm.Kernel.Arch.PageShift : 0;
        long rss = live ? mm.Rss : 0;
        ulong F(ulong v) => live ? v : 0;
        var f = new string[52];
        for (int i = 0; i < f.Length; i++) f[i] = "0";
        f[0] = task.Pid.ToString(Inv);
        f[1] = "(" + task.Comm + ")";
        f[2] = state.ToString();
        f[3] = task.Ppid.ToString(Inv);
        f[4] = task.Pgid.ToString(Inv);
        f[5] = task.Sid.ToString(Inv);
        f[7] = "-1";
        f[19] = "1";
        f[21] = ticks.ToString(Inv);
        f[22] = vsize.ToString(Inv);
        f[23] = rss.ToString(Inv);
        f[24] = "18446744073709551615";
        f[25] = F(mm.StartCode).ToString(Inv);
        f[26] = F(mm.EndCode).ToString(Inv);
        f[27] = F(mm.StartStack).ToString(Inv);
        f[37] = "17";
        f[44] = F(mm.StartData).ToString(Inv);
        f[45] = F(mm.EndData).ToString(Inv);
        f[46] = F(mm.StartBrk).ToString(Inv);
        f[47] = F(mm.ArgStart).ToString(Inv);
        f[48] = F(mm.ArgEnd).ToString(Inv);
        f[49] = F(mm.EnvStart).ToString(Inv);
        f[50] = F(mm.EnvEnd).ToString(Inv);
        f[51] = task.ExitCode.ToString(Inv);
        return string.Join(' ', f) + "\n";
    }
}

namespace CriuSharp.SimKernel.Mm;

/// <summary>
/// <c>vm_flags</c> bits with the values of include/linux/mm.h on 64-bit builds. The values matter:
/// <c>/proc/PID/smaps</c> prints its VmFlags mnemonics in bit order.
/// </summary>
[Flags]
public enum VmaFlags : ulong
{
    None = 0,
    Read = 0x1,
    Write = 0x2,
    Exec = 0x4,
    Shared = 0x8,
    MayRead = 0x10,
    MayWrite = 0x20,
    MayExec = 0x40,
    MayShare = 0x80,
    GrowsDown = 0x100,
    UffdMissing = 0x200,
    PfnMap = 0x400,
    UffdWp = 0x1000,
    Locked = 0x2000,
    Io = 0x4000,
    SeqRead = 0x8000,
    RandRead = 0x10000,
    DontCopy = 0x20000,
    DontExpand = 0x40000,
    LockOnFault = 0x80000,
    Account = 0x100000,
    NoReserve = 0x200000,
    HugeTlb = 0x400000,
    Sync = 0x800000,
    Arch1 = 0x1000000,
    WipeOnFork = 0x2000000,
    DontDump = 0x4000000,
    /// <summary>"Treat every page of this VMA as soft-dirty" (S10). Zero on kernels without soft-dirty.</summary>
    SoftDirty = 0x8000000,
    MixedMap = 0x10000000,
    HugePage = 0x20000000,
    NoHugePage = 0x40000000,
    Mergeable = 0x80000000,
}

public static class VmaFlagNames
{
    // fs/proc/task_mmu.c show_smap_vma_flags: two letters per bit, printed in bit order.
    private static readonly (VmaFlags Flag, string Name)[] Mnemonics =
    [
        (VmaFlags.Read, "rd"), (VmaFlags.Write, "wr"), (VmaFlags.Exec, "ex"), (VmaFlags.Shared, "sh"),
        (VmaFlags.MayRead, "mr"), (VmaFlags.MayWrite, "mw"), (VmaFlags.MayExec, "me"), (VmaFlags.MayShare, "ms"),
        (VmaFlags.GrowsDown, "gd"), (VmaFlags.UffdMissing, "um"), (VmaFlags.PfnMap, "pf"), (VmaFlags.UffdWp, "uw"),
        (VmaFlags.Locked, "lo"), (VmaFlags.Io, "io"), (VmaFlags.SeqRead, "sr"), (VmaFlags.RandRead, "rr"),
        (VmaFlags.DontCopy, "dc"), (VmaFlags.DontExpand, "de"), (VmaFlags.LockOnFault, "lf"), (VmaFlags.Account, "ac"),
        (VmaFlags.NoReserve, "nr"), (VmaFlags.HugeTlb, "ht"), (VmaFlags.Sync, "sf"), (VmaFlags.Arch1, "ar"),
        (VmaFlags.WipeOnFork, "wf"), (VmaFlags.DontDump, "dd"), (VmaFlags.SoftDirty, "sd"), (VmaFlags.MixedMap, "mm"),
        (VmaFlags.HugePage, "hg"), (VmaFlags.NoHugePage, "nh"), (VmaFlags.Mergeable, "mg"),
    ];

    public static string Format(VmaFlags flags)
    {
        var sb = new System.Text.StringBuilder();
        foreach (var (flag, name) in Mnemonics)
            if ((flags & flag) != 0)
                sb.Append(name).Append(' ');
        return sb.ToString();
    }
}

using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper.Proc;

/// <summary>The smaps VmFlags mnemonics CRIU looks at (fs/proc/task_mmu.c show_smap_vma_flags).</summary>
[Flags]
public enum SmapsFlags : uint
{
    None = 0,
    GrowsDown = 1 << 0,   // gd
    Locked = 1 << 1,      // lo
    Io = 1 << 2,          // io
    PfnMap = 1 << 3,      // pf
    SeqRead = 1 << 4,     // sr
    RandRead = 1 << 5,    // rr
    DontCopy = 1 << 6,    // dc
    NoReserve = 1 << 7,   // nr
    HugeTlb = 1 << 8,     // ht
    DontDump = 1 << 9,    // dd
    SoftDirty = 1 << 10,  // sd
    HugePage = 1 << 11,   // hg
    NoHugePage = 1 << 12, // nh
    Mergeable = 1 << 13,  // mg
    UffdWp = 1 << 14,     // uw
    WipeOnFork = 1 << 15, // wf
}

/// <summary>
/// One line of /proc/PID/maps (plus its smaps VmFlags), with the classification CRIU derives from
/// it (criu/proc_parse.c): status bits, MAP_* flags, madvise bits, and the identity of a shared
/// object (the inode of the file or of the shmem object behind /dev/zero (deleted)).
/// </summary>
public sealed record VmaInfo(
    ulong Start, ulong End, uint Prot, bool Shared, ulong PgOff, uint DevMajor, uint DevMinor, ulong Inode,
    string? Name, SmapsFlags VmFlags, ulong AnonHugeBytes)
{
    public const uint ProtRead = 1, ProtWrite = 2, ProtExec = 4;

    public ulong Length => End - Start;
    /// <summary>smaps KernelPageSize: the huge page size of a hugetlb VMA (0 when smaps was not read).</summary>
    public ulong KernelPageBytes { get; init; }
    public bool IsShmem => Shared && Name == "/dev/zero (deleted)";
    /// <summary>
    /// Dumped through the shmem images, once per object: shared anonymous memory, and every shared
    /// hugetlb mapping (MAP_HUGETLB|MAP_SHARED, memfd MFD_HUGETLB, SysV SHM_HUGETLB), which
    /// criu/proc_parse.c classifies VMA_ANON_SHARED with the hugetlbfs inode as shmid.
    /// </summary>
    public bool IsAnonShared => IsShmem || (IsHugetlb && Shared);
    /// <summary>A file CRIU reopens by path: never a hugetlbfs inode, which proc_parse.c turns into anonymous memory.</summary>
    public bool IsFile => Name is not null && Name.StartsWith('/') && !IsShmem && !IsHugetlb;
    /// <summary>The kernel's data pages for the vDSO: [vvar], and [vvar_vclock] (Linux 6.13 split the clock pages out).</summary>
    public bool IsVvar => Name is "[vvar]" or "[vvar_vclock]" || (VmFlags & SmapsFlags.PfnMap) != 0 || (VmFlags & SmapsFlags.Io) != 0;
    public bool IsVdso => Name == "[vdso]";
    public bool IsVsyscall => Name == "[vsyscall]";
    public bool IsHugetlb => (VmFlags & SmapsFlags.HugeTlb) != 0;
    public bool IsAnonPrivate => !Shared && !IsFile && !IsShmem;

    public VmaStatus Status
    {
        get
        {
            if (IsVsyscall) return VmaStatus.Vsyscall | VmaStatus.AnonPrivate;
            if (Name is "[vvar]" or "[vvar_vclock]") return VmaStatus.Regular | VmaStatus.Vvar | VmaStatus.AnonPrivate;
            var s = VmaStatus.Regular;
            if (IsVdso) s |= VmaStatus.Vdso;
            if (Name == "[heap]") s |= VmaStatus.Heap;
            if (Name == "[stack]") s |= VmaStatus.Stack;
            if (IsHugetlb && Shared && Name is not null && Name.StartsWith("/SYSV", StringComparison.Ordinal))
                s |= VmaStatus.SysVIpc | VmaStatus.AnonShared;
            else if (IsAnonShared) s |= VmaStatus.AnonShared;
            else if (IsFile) s |= Shared ? VmaStatus.FileShared : VmaStatus.FilePrivate;
            else s |= Shared ? VmaStatus.AnonShared : VmaStatus.AnonPrivate;
            return s;
        }
    }

    public uint MapFlags
    {
        get
        {
            uint f = Shared ? VmaMapFlags.Shared : VmaMapFlags.Private;
            if (!IsFile) f |= VmaMapFlags.Anonymous;
            if ((VmFlags & SmapsFlags.GrowsDown) != 0) f |= VmaMapFlags.GrowsDown;
            if ((VmFlags & SmapsFlags.Locked) != 0) f |= VmaMapFlags.Locked;
            if ((VmFlags & SmapsFlags.NoReserve) != 0) f |= VmaMapFlags.NoReserve;
            // The hugetlb size rides in the MAP_HUGE_SHIFT bits (criu/include/hugetlb.h), as
            // is_hugetlb_dev reports it for the VMA's hugetlbfs device.
            if ((VmFlags & SmapsFlags.HugeTlb) != 0) f |= VmaMapFlags.HugeTlb | VmaMapFlags.HugetlbSizeFlag(KernelPageBytes);
            return f;
        }
    }

    /// <summary>vma_entry.madv: bit n = madvise advice n (criu/proc_parse.c).</summary>
    public ulong Madv
    {
        get
        {
            ulong m = 0;
            if ((VmFlags & SmapsFlags.RandRead) != 0) m |= 1UL << 1;
            if ((VmFlags & SmapsFlags.SeqRead) != 0) m |= 1UL << 2;
            if ((VmFlags & SmapsFlags.DontCopy) != 0) m |= 1UL << 10;
            if ((VmFlags & SmapsFlags.Mergeable) != 0) m |= 1UL << 12;
            if ((VmFlags & SmapsFlags.HugePage) != 0) m |= 1UL << 14;
            if ((VmFlags & SmapsFlags.NoHugePage) != 0) m |= 1UL << 15;
            if ((VmFlags & SmapsFlags.DontDump) != 0) m |= 1UL << 16;
            return m;
        }
    }
}

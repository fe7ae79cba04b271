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
    public bool IsShmem => Shared && Name == "/dev/zero (deleted)";
    public bool IsFile => Name is not null && Name.StartsWith('/') && !IsShmem;
    public bool IsVvar => Name == "[vvar]" || (VmFlags & SmapsFlags.PfnMap) != 0 || (VmFlags & SmapsFlags.Io) != 0;
    public bool IsVdso => Name == "[vdso]";
    public bool IsVsyscall => Name == "[vsyscall]";
    public bool IsHugetlb => (VmFlags & SmapsFlags.HugeTlb) != 0;
    public bool IsAnonPrivate => !Shared && !IsFile && !IsShmem;

    public VmaStatus Status
    {
        get
        {
            if (IsVsyscall) return VmaStatus.Vsyscall | VmaStatus.AnonPrivate;
            if (Name == "[vvar]") return VmaStatus.Regular | VmaStatus.Vvar | VmaStatus.AnonPrivate;
            var s = VmaStatus.Regular;
            if (IsVdso) s |= VmaStatus.Vdso;
            if (Name == "[heap]") s |= VmaStatus.Heap;
            if (Name == "[stack]") s |= VmaStatus.Stack;
            if (IsShmem) s |= VmaStatus.AnonShared;
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
            if ((VmFlags & SmapsFlags.HugeTlb) != 0) f |= VmaMapFlags.HugeTlb;
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

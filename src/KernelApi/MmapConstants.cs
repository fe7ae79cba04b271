namespace CriuSharp.KernelApi;

/// <summary>PROT_* values from asm-generic/mman-common.h.</summary>
[Flags]
public enum Prot
{
    None = 0x0,
    Read = 0x1,
    Write = 0x2,
    Exec = 0x4,
}

/// <summary>MAP_* values for x86_64 (asm-generic/mman-common.h, asm/mman.h).</summary>
[Flags]
public enum MapFlags
{
    None = 0,
    Shared = 0x01,
    Private = 0x02,
    SharedValidate = 0x03,
    Fixed = 0x10,
    Anonymous = 0x20,
    GrowsDown = 0x0100,
    Locked = 0x2000,
    NoReserve = 0x4000,
    Populate = 0x8000,
    HugeTlb = 0x40000,
    FixedNoReplace = 0x100000,
}

/// <summary>madvise advice values (asm-generic/mman-common.h).</summary>
public enum Madvise
{
    Normal = 0,
    Random = 1,
    Sequential = 2,
    WillNeed = 3,
    DontNeed = 4,
    Free = 8,
    Remove = 9,
    DontFork = 10,
    DoFork = 11,
    Mergeable = 12,
    Unmergeable = 13,
    HugePage = 14,
    NoHugePage = 15,
    DontDump = 16,
    DoDump = 17,
    Cold = 20,
    PageOut = 21,
    PopulateRead = 22,
    PopulateWrite = 23,
    Collapse = 25,
    GuardInstall = 102,
    GuardRemove = 103,
}

/// <summary>mremap flags (uapi/linux/mman.h).</summary>
[Flags]
public enum MremapFlags
{
    None = 0,
    MayMove = 1,
    Fixed = 2,
    DontUnmap = 4,
}

/// <summary>clear_refs command values accepted by /proc/PID/clear_refs (fs/proc/task_mmu.c).</summary>
public enum ClearRefsType
{
    All = 1,
    Anon = 2,
    Mapped = 3,
    SoftDirty = 4,
    MmHiwaterRss = 5,
}

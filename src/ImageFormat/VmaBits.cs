namespace CriuSharp.ImageFormat;

/// <summary>CRIU's VMA_* status bits (criu/include/image.h), as stored in vma_entry.status.</summary>
[Flags]
public enum VmaStatus : uint
{
    None = 0,
    Regular = 0x1,
    Stack = 0x2,
    Vsyscall = 0x4,
    Vdso = 0x8,
    Heap = 0x20,
    FilePrivate = 0x40,
    FileShared = 0x80,
    AnonShared = 0x100,
    AnonPrivate = 0x200,
    SysVIpc = 0x400,
    Vvar = 0x1000,
    AioRing = 0x2000,
}

/// <summary>MAP_* bits CRIU stores in vma_entry.flags (x86_64 values).</summary>
public static class VmaMapFlags
{
    public const uint Shared = 0x01, Private = 0x02, Anonymous = 0x20, GrowsDown = 0x100,
        Locked = 0x2000, NoReserve = 0x4000, HugeTlb = 0x40000;

    /// <summary>MAP_HUGETLB_SHIFT and MAP_HUGETLB_SIZE_MASK (criu/include/hugetlb.h): log2 of the huge page size in bits 26-31.</summary>
    public const int HugetlbShift = 26;
    public const uint HugetlbSizeMask = 0x3fu << HugetlbShift;

    /// <summary>The size flag of a huge page of <paramref name="bytes"/> (MAP_HUGETLB_2MB for 2 MiB); 0 for an unknown size.</summary>
    public static uint HugetlbSizeFlag(ulong bytes) =>
        bytes != 0 && System.Numerics.BitOperations.IsPow2(bytes) ? (uint)System.Numerics.BitOperations.Log2(bytes) << HugetlbShift : 0;

    /// <summary>The huge page size a vma_entry's flags name, or 0 when they carry no size.</summary>
    public static ulong HugetlbSize(uint flags) =>
        (flags & HugetlbSizeMask) is var bits and not 0 ? 1UL << (int)(bits >> HugetlbShift) : 0;
}

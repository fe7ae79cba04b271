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
}

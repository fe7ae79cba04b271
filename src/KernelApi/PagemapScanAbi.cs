namespace CriuSharp.KernelApi;

/// <summary>PAGE_IS_* categories, PM_SCAN_* flags and the ioctl number (uapi/linux/fs.h).</summary>
public static class PageCategory
{
    public const ulong WpAllowed = 1UL << 0;
    public const ulong Written = 1UL << 1;
    public const ulong File = 1UL << 2;
    public const ulong Present = 1UL << 3;
    public const ulong Swapped = 1UL << 4;
    public const ulong PfnZero = 1UL << 5;
    public const ulong Huge = 1UL << 6;
    public const ulong SoftDirty = 1UL << 7;
    public const ulong Guard = 1UL << 8;
    public const ulong All = (1UL << 9) - 1;

    public const ulong ScanWpMatching = 1UL << 0;
    public const ulong ScanCheckWpAsync = 1UL << 1;
    /// <summary>_IOWR('f', 16, struct pm_scan_arg).</summary>
    public const uint PagemapScanIoctl = 0xC0606610;
    public const ulong ArgSize = 96;
}

/// <summary>struct pm_scan_arg: twelve u64 fields, 96 bytes. <c>Vec</c> stands for the user pointer (0 = none).</summary>
public struct PmScanArg
{
    public ulong Size;
    public ulong Flags;
    public ulong Start;
    public ulong End;
    public ulong WalkEnd;
    public ulong Vec;
    public ulong VecLen;
    public ulong MaxPages;
    public ulong CategoryInverted;
    public ulong CategoryMask;
    public ulong CategoryAnyofMask;
    public ulong ReturnMask;

    /// <summary>Byte offset of walk_end in struct pm_scan_arg (the one field the kernel writes back).</summary>
    public const ulong WalkEndOffset = 32;

    /// <summary>The 96 bytes of a struct pm_scan_arg as laid out in user memory (little-endian u64s).</summary>
    public static PmScanArg Decode(ReadOnlySpan<byte> b)
    {
        static ulong U(ReadOnlySpan<byte> s, int i) => System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(s[(i * 8)..]);
        return new PmScanArg
        {
            Size = U(b, 0), Flags = U(b, 1), Start = U(b, 2), End = U(b, 3), WalkEnd = U(b, 4), Vec = U(b, 5),
            VecLen = U(b, 6), MaxPages = U(b, 7), CategoryInverted = U(b, 8), CategoryMask = U(b, 9),
            CategoryAnyofMask = U(b, 10), ReturnMask = U(b, 11),
        };
    }

    /// <summary>Writes the argument block as user memory holds it.</summary>
    public readonly void Encode(Span<byte> b)
    {
        ReadOnlySpan<ulong> f = [Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages, CategoryInverted, CategoryMask, CategoryAnyofMask, ReturnMask];
        for (int i = 0; i < f.Length; i++)
            System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(b[(i * 8)..], f[i]);
    }

    public static PmScanArg Create(ulong start, ulong end, ulong vecLen, ulong categoryMask, ulong returnMask,
        ulong flags = 0, ulong maxPages = 0, ulong inverted = 0, ulong anyof = 0) => new()
        {
            Size = PageCategory.ArgSize,
            Flags = flags,
            Start = start,
            End = end,
            Vec = vecLen > 0 ? 1UL : 0,
            VecLen = vecLen,
            MaxPages = maxPages,
            CategoryInverted = inverted,
            CategoryMask = categoryMask,
            CategoryAnyofMask = anyof,
            ReturnMask = returnMask,
        };
}

/// <summary>struct page_region: [Start, End) and the (return-masked) categories of that run.</summary>
public record struct PageRegion(ulong Start, ulong End, ulong Categories);

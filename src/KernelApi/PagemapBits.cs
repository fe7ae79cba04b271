namespace CriuSharp.KernelApi;

/// <summary>
/// Bits of a <c>/proc/PID/pagemap</c> entry (Documentation/admin-guide/mm/pagemap.rst).
/// </summary>
public static class PagemapBits
{
    public const int SoftDirtyBit = 55;
    public const int ExclusiveBit = 56;
    public const int UffdWpBit = 57;
    public const int GuardBit = 58;
    public const int FileBit = 61;
    public const int SwapBit = 62;
    public const int PresentBit = 63;

    /// <summary>Bits 0–54: PFN when present, swap type (0–4) and offset (5–54) when swapped.</summary>
    public const ulong PfnMask = (1UL << 55) - 1;
    public const int SwapTypeBits = 5;
    public const ulong SoftDirty = 1UL << SoftDirtyBit;
    public const ulong Exclusive = 1UL << ExclusiveBit;
    public const ulong UffdWp = 1UL << UffdWpBit;
    public const ulong Guard = 1UL << GuardBit;
    public const ulong File = 1UL << FileBit;
    public const ulong Swap = 1UL << SwapBit;
    public const ulong Present = 1UL << PresentBit;

    /// <summary>v1 layout (2.6.25–3.10): bits 55–60 hold the page shift.</summary>
    public const int V1PageShiftBit = 55;
    public const ulong V1PageShiftMask = 0x3FUL << V1PageShiftBit;

    public static bool IsPresent(ulong e) => (e & Present) != 0;
    public static bool IsSwapped(ulong e) => (e & Swap) != 0;
    public static bool IsSoftDirty(ulong e) => (e & SoftDirty) != 0;
    public static bool IsExclusive(ulong e) => (e & Exclusive) != 0;
    public static bool IsFile(ulong e) => (e & File) != 0;
    public static bool IsUffdWp(ulong e) => (e & UffdWp) != 0;
    public static ulong Pfn(ulong e) => e & PfnMask;
    public static ulong SwapType(ulong e) => e & ((1UL << SwapTypeBits) - 1);
    public static ulong SwapOffset(ulong e) => (e & PfnMask) >> SwapTypeBits;
}

/// <summary>The entry layouts a pagemap file can use.</summary>
public enum PagemapLayout
{
    /// <summary>4.2+: 55 soft-dirty, 56 exclusive, 57 uffd-wp, 58 guard, 61 file/shared-anon, 62 swapped, 63 present.</summary>
    Modern,
    /// <summary>The 2013 series' /proc/PID/pagemap2: bit 55 soft-dirty, 56–60 zero.</summary>
    Pagemap2,
    /// <summary>2.6.25–3.10: bits 55–60 hold the page shift; a hole reads (PAGE_SHIFT &lt;&lt; 55).</summary>
    V1,
}

namespace CriuSharp.SimKernel.Arch;

/// <summary>
/// x86_64 page-table entry bits (arch/x86/include/asm/pgtable_types.h, pgtable_64.h).
/// Soft-dirty is software bit 3 = bit 11; uffd-wp is software bit 2 = bit 10; bit 9 is "special".
/// A swap entry keeps its type in bits 59–63 and the offset inverted in bits 9–58 (the L1TF
/// mitigation), leaving bits 1–3 for the swap soft-dirty, uffd-wp and exclusive markers.
/// </summary>
public static class PteBitsX86_64
{
    public const ulong Present = 1UL << 0;
    public const ulong Rw = 1UL << 1;
    public const ulong User = 1UL << 2;
    public const ulong Pwt = 1UL << 3;
    public const ulong Pcd = 1UL << 4;
    public const ulong Accessed = 1UL << 5;
    public const ulong Dirty = 1UL << 6;
    /// <summary>PSE: a PMD that maps a huge page directly.</summary>
    public const ulong Pse = 1UL << 7;
    /// <summary>_PAGE_PROTNONE aliases the global bit: present-but-inaccessible entries clear bit 0 and set this.</summary>
    public const ulong ProtNone = 1UL << 8;
    public const ulong Special = 1UL << 9;
    public const ulong UffdWp = 1UL << 10;
    public const ulong SoftDirty = 1UL << 11;
    public const ulong Nx = 1UL << 63;
    public const int PfnShift = 12;
    public const ulong PfnMask = ((1UL << 52) - 1) & ~((1UL << 12) - 1);

    // Swap entries (non-present, non-none).
    public const ulong SwpSoftDirty = 1UL << 1;
    public const ulong SwpUffdWp = 1UL << 2;
    public const ulong SwpExclusive = 1UL << 3;
    public const int SwpTypeBits = 5;
    public const int SwpOffsetFirstBit = 9;
    public const int SwpOffsetShift = SwpOffsetFirstBit + SwpTypeBits;
}

/// <summary>
/// ppc64 book3s hash-MMU bits with 64 KiB pages, as laid out when soft-dirty was added for powerpc
/// (the 2015 patch in the seeds: _PAGE_SOFT_DIRTY 0x10; the swap soft-dirty bit sits right after the
/// 5-bit swap type that starts at bit 2, i.e. bit 7).
/// </summary>
public static class PteBitsPpc64
{
    public const ulong Present = 0x0001;
    public const ulong User = 0x0002;
    public const ulong Exec = 0x0004;
    public const ulong Guarded = 0x0008;
    public const ulong SoftDirty = 0x0010;
    public const ulong NoCache = 0x0020;
    public const ulong WriteThru = 0x0040;
    public const ulong Dirty = 0x0080;
    public const ulong Accessed = 0x0100;
    public const ulong Rw = 0x0200;
    public const ulong Special = 0x0400;
    /// <summary>Marks a PMD that maps a transparent huge page (16 MiB with 64 KiB pages).</summary>
    public const ulong ThpHuge = 0x1000;
    /// <summary>The real page number starts at bit 30 with 64 KiB pages.</summary>
    public const int PfnShift = 30;
    public const ulong PfnMask = ~((1UL << 30) - 1);
    public const int SwapTypeShift = 2;
    public const int SwpTypeBits = 5;
    public const ulong SwpSoftDirty = 1UL << (SwpTypeBits + SwapTypeShift);
}

/// <summary>
/// arm64 4 KiB-granule descriptor bits (arch/arm64/include/asm/pgtable-hwdef.h, pgtable-prot.h, 6.10+).
/// There is no soft-dirty bit: the software bits are taken (PTE_DIRTY 55, PTE_SPECIAL 56, uffd-wp 58),
/// which is why the 2017 and 2024 patches were not merged and userfaultfd write-protect is the answer.
/// </summary>
public static class PteBitsArm64
{
    public const ulong Valid = 1UL << 0;
    /// <summary>Bits [1:0] = 0b11 is a page (level 3) or table; 0b01 at the PMD level is a block (huge) mapping.</summary>
    public const ulong TypePage = 1UL << 1;
    public const ulong User = 1UL << 6;
    public const ulong RdOnly = 1UL << 7;
    public const ulong Shared = 3UL << 8;
    public const ulong Af = 1UL << 10;
    /// <summary>PTE_PRESENT_INVALID (reuses nG) marks PROT_NONE entries that are present but not valid.</summary>
    public const ulong PresentInvalid = 1UL << 11;
    /// <summary>DBM doubles as the software PTE_WRITE bit.</summary>
    public const ulong Write = 1UL << 51;
    public const ulong Pxn = 1UL << 53;
    public const ulong Uxn = 1UL << 54;
    public const ulong SwDirty = 1UL << 55;
    public const ulong Special = 1UL << 56;
    public const ulong UffdWp = 1UL << 58;
    public const int PfnShift = 12;
    public const ulong PfnMask = ((1UL << 48) - 1) & ~((1UL << 12) - 1);

    public const ulong SwpExclusive = 1UL << 2;
    public const ulong SwpUffdWp = 1UL << 3;
    public const int SwpTypeShift = 6;
    public const int SwpTypeBits = 5;
    public const int SwpOffsetShift = 12;
}

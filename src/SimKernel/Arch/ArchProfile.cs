namespace CriuSharp.SimKernel.Arch;

/// <summary>
/// One architecture's page geometry and page-table-entry bit layout. The simulator stores real
/// 64-bit entry values, so every bit operation goes through the masks here; the masks are plain
/// fields so the per-page paths stay free of virtual calls.
/// </summary>
public sealed class ArchProfile
{
    public enum Family { X86_64, Ppc64, Arm64 }

    public required Family Kind { get; init; }
    public required string Name { get; init; }
    /// <summary>CRIU's <c>march</c> value for core images (X86_64 = 1, AARCH64 = 3, PPC64 = 4).</summary>
    public required int CriuMtype { get; init; }
    public required int PageShift { get; init; }
    /// <summary>log2 of the entries in one page table (x86_64 and arm64: 9; ppc64 64K hash: 8).</summary>
    public required int PteIndexBits { get; init; }
    /// <summary>First address past the user address space.</summary>
    public required ulong TaskSize { get; init; }
    /// <summary>Does the kernel select HAVE_ARCH_SOFT_DIRTY on this architecture?</summary>
    public required bool HasSoftDirty { get; init; }
    /// <summary>Does the architecture implement userfaultfd write-protect (HAVE_ARCH_USERFAULTFD_WP)?</summary>
    public required bool HasUffdWp { get; init; }

    // Present entries.
    public required ulong PresentBits { get; init; }
    public required ulong PresentTest { get; init; }
    public required ulong HugePresentBits { get; init; }
    public required ulong ProtNoneSet { get; init; }
    public required ulong ProtNoneClear { get; init; }
    public required ulong Write { get; init; }
    public required ulong RdOnly { get; init; }
    public required ulong Accessed { get; init; }
    public required ulong Dirty { get; init; }
    public required ulong SoftDirty { get; init; }
    public required ulong UffdWp { get; init; }
    public required int PfnShift { get; init; }
    public required ulong PfnMask { get; init; }

    // Non-present (swap and marker) entries.
    public required ulong SwpSoftDirty { get; init; }
    public required ulong SwpUffdWp { get; init; }
    public required ulong SwpExclusive { get; init; }

    public int PageSize => 1 << PageShift;
    public ulong PageMask => ~((ulong)PageSize - 1);
    public int PtrsPerTable => 1 << PteIndexBits;
    /// <summary>Shift of one PMD entry: the transparent huge page size (2 MiB, or 16 MiB on ppc64 64K).</summary>
    public int PmdShift => PageShift + PteIndexBits;
    public ulong HugePageSize => 1UL << PmdShift;
    public int PagesPerHuge => 1 << PteIndexBits;

    /// <summary>Swap type that pte markers use; pagemap shows it as type 31.</summary>
    public const int MarkerSwapType = 31;
    /// <summary>Marker payloads (include/linux/swapops.h): uffd-wp = bit 0, guard = bit 2.</summary>
    public const ulong MarkerUffdWp = 1;
    public const ulong MarkerGuard = 4;

    public static ArchProfile X86_64 { get; } = new()
    {
        Kind = Family.X86_64,
        Name = "x86_64",
        CriuMtype = 1,
        PageShift = 12,
        PteIndexBits = 9,
        TaskSize = 0x7ffffffff000UL,
        HasSoftDirty = true,
        HasUffdWp = true,
        PresentBits = PteBitsX86_64.Present | PteBitsX86_64.User | PteBitsX86_64.Nx,
        PresentTest = PteBitsX86_64.Present | PteBitsX86_64.ProtNone,
        HugePresentBits = PteBitsX86_64.Present | PteBitsX86_64.User | PteBitsX86_64.Pse | PteBitsX86_64.Nx,
        ProtNoneSet = PteBitsX86_64.ProtNone,
        ProtNoneClear = PteBitsX86_64.Present,
        Write = PteBitsX86_64.Rw,
        RdOnly = 0,
        Accessed = PteBitsX86_64.Accessed,
        Dirty = PteBitsX86_64.Dirty,
        SoftDirty = PteBitsX86_64.SoftDirty,
        UffdWp = PteBitsX86_64.UffdWp,
        PfnShift = PteBitsX86_64.PfnShift,
        PfnMask = PteBitsX86_64.PfnMask,
        SwpSoftDirty = PteBitsX86_64.SwpSoftDirty,
        SwpUffdWp = PteBitsX86_64.SwpUffdWp,
        SwpExclusive = PteBitsX86_64.SwpExclusive,
    };

    public static ArchProfile Ppc64 { get; } = new()
    {
        Kind = Family.Ppc64,
        Name = "ppc64",
        CriuMtype = 4,
        PageShift = 16,
        PteIndexBits = 8,
        TaskSize = 0x0000800000000000UL,
        HasSoftDirty = true,
        HasUffdWp = false,
        PresentBits = PteBitsPpc64.Present | PteBitsPpc64.User,
        PresentTest = PteBitsPpc64.Present,
        HugePresentBits = PteBitsPpc64.Present | PteBitsPpc64.User | PteBitsPpc64.ThpHuge,
        // PAGE_NONE on the hash MMU is a present entry without user access.
        ProtNoneSet = 0,
        ProtNoneClear = PteBitsPpc64.User,
        Write = PteBitsPpc64.Rw,
        RdOnly = 0,
        Accessed = PteBitsPpc64.Accessed,
        Dirty = PteBitsPpc64.Dirty,
        SoftDirty = PteBitsPpc64.SoftDirty,
        UffdWp = 0,
        PfnShift = PteBitsPpc64.PfnShift,
        PfnMask = PteBitsPpc64.PfnMask,
        SwpSoftDirty = PteBitsPpc64.SwpSoftDirty,
        SwpUffdWp = 0,
        SwpExclusive = 0,
    };

    public static ArchProfile Arm64 { get; } = new()
    {
        Kind = Family.Arm64,
        Name = "arm64",
        CriuMtype = 3,
        PageShift = 12,
        PteIndexBits = 9,
        TaskSize = 0x0001000000000000UL,
        HasSoftDirty = false,
        HasUffdWp = true,
        PresentBits = PteBitsArm64.Valid | PteBitsArm64.TypePage | PteBitsArm64.User | PteBitsArm64.Af | PteBitsArm64.Shared | PteBitsArm64.Pxn | PteBitsArm64.Uxn,
        PresentTest = PteBitsArm64.Valid | PteBitsArm64.PresentInvalid,
        HugePresentBits = PteBitsArm64.Valid | PteBitsArm64.User | PteBitsArm64.Af | PteBitsArm64.Shared | PteBitsArm64.Pxn | PteBitsArm64.Uxn,
        ProtNoneSet = PteBitsArm64.PresentInvalid,
        ProtNoneClear = PteBitsArm64.Valid,
        Write = PteBitsArm64.Write,
        RdOnly = PteBitsArm64.RdOnly,
        Accessed = PteBitsArm64.Af,
        Dirty = PteBitsArm64.SwDirty,
        SoftDirty = 0,
        UffdWp = PteBitsArm64.UffdWp,
        PfnShift = PteBitsArm64.PfnShift,
        PfnMask = PteBitsArm64.PfnMask,
        SwpSoftDirty = 0,
        SwpUffdWp = PteBitsArm64.SwpUffdWp,
        SwpExclusive = PteBitsArm64.SwpExclusive,
    };

    public static ArchProfile Parse(string name) => name switch
    {
        "x86_64" or "x86-64" or "amd64" => X86_64,
        "ppc64" or "ppc64le" or "powerpc" => Ppc64,
        "arm64" or "aarch64" => Arm64,
        _ => throw new ArgumentException($"unknown architecture '{name}' (expected x86_64, ppc64 or arm64)"),
    };

    // ---- entry helpers -------------------------------------------------------------------

    public bool IsPresent(ulong e) => (e & PresentTest) != 0;
    /// <summary>Non-present and non-empty: a swap entry or a pte marker.</summary>
    public bool IsSwapLike(ulong e) => e != 0 && (e & PresentTest) == 0;
    public long Pfn(ulong e) => (long)((e & PfnMask) >> PfnShift);
    public bool IsWritable(ulong e) => (e & Write) != 0;

    public ulong MakePresent(long pfn, bool writable, bool dirty)
    {
        ulong e = PresentBits | (((ulong)pfn << PfnShift) & PfnMask) | Accessed;
        e |= writable ? Write : RdOnly;
        if (dirty)
            e |= Dirty | SoftDirty; // pte_mkdirty sets the soft-dirty bit too (S1)
        return e;
    }

    public ulong MakeHuge(long headPfn, bool writable, bool dirty)
    {
        ulong e = HugePresentBits | (((ulong)headPfn << PfnShift) & PfnMask) | Accessed;
        e |= writable ? Write : RdOnly;
        if (dirty)
            e |= Dirty | SoftDirty;
        return e;
    }

    public ulong WrProtect(ulong e) => (e & ~Write) | RdOnly;
    public ulong MkWrite(ulong e) => (e | Write) & ~RdOnly;
    public ulong MkDirty(ulong e) => e | Dirty | SoftDirty | Accessed;
    public ulong WithPfn(ulong e, long pfn) => (e & ~PfnMask) | (((ulong)pfn << PfnShift) & PfnMask);

    /// <summary>PROT_NONE keeps the entry "present" to the kernel but inaccessible to the CPU.</summary>
    public ulong MkProtNone(ulong e) => (e & ~ProtNoneClear) | ProtNoneSet;
    public ulong MkAccessible(ulong e) => (e & ~ProtNoneSet) | ProtNoneClear;
    public bool IsProtNone(ulong e) => ProtNoneSet != 0 ? (e & ProtNoneSet) != 0 : (e & ProtNoneClear) == 0;

    public ulong EncodeSwap(int type, ulong offset)
    {
        switch (Kind)
        {
            case Family.X86_64:
                return ((~offset << PteBitsX86_64.SwpOffsetShift) >> PteBitsX86_64.SwpTypeBits)
                       | ((ulong)type << (64 - PteBitsX86_64.SwpTypeBits));
            case Family.Arm64:
                return ((ulong)type << PteBitsArm64.SwpTypeShift) | (offset << PteBitsArm64.SwpOffsetShift);
            default:
                return ((ulong)type << PteBitsPpc64.SwapTypeShift) | (offset << PteBitsPpc64.PfnShift);
        }
    }

    public int SwapType(ulong e) => Kind switch
    {
        Family.X86_64 => (int)(e >> (64 - PteBitsX86_64.SwpTypeBits)),
        Family.Arm64 => (int)((e >> PteBitsArm64.SwpTypeShift) & 0x1f),
        _ => (int)((e >> PteBitsPpc64.SwapTypeShift) & 0x1f),
    };

    public ulong SwapOffset(ulong e) => Kind switch
    {
        Family.X86_64 => ~e << PteBitsX86_64.SwpTypeBits >> PteBitsX86_64.SwpOffsetShift,
        Family.Arm64 => e >> PteBitsArm64.SwpOffsetShift,
        _ => e >> PteBitsPpc64.PfnShift,
    };

    public bool IsMarker(ulong e) => IsSwapLike(e) && SwapType(e) == MarkerSwapType;
    public ulong MakeMarker(ulong markerBits) => EncodeSwap(MarkerSwapType, markerBits);

    /// <summary>Does this entry carry uffd-wp protection (present bit, swap bit, or an uffd-wp marker)?</summary>
    public bool HasUffdWpState(ulong e)
    {
        if (e == 0)
            return false;
        if (IsPresent(e))
            return (e & UffdWp) != 0;
        if (IsMarker(e))
            return (SwapOffset(e) & MarkerUffdWp) != 0;
        return (e & SwpUffdWp) != 0;
    }

    /// <summary>Soft-dirty as stored in the entry itself (present bit or swap bit), without the VMA flag.</summary>
    public bool EntrySoftDirty(ulong e)
    {
        if (e == 0)
            return false;
        if (IsPresent(e))
            return (e & SoftDirty) != 0;
        if (IsMarker(e))
            return false;
        return (e & SwpSoftDirty) != 0;
    }
}

using CriuSharp.SimKernel.Proc;

namespace CriuSharp.SimKernel;

/// <summary>
/// Which interfaces and rules a kernel release has. The architecture decides whether soft-dirty
/// can exist at all; the version decides which userspace interfaces expose it and how.
/// </summary>
public sealed class KernelVersion
{
    public required string Name { get; init; }
    public required string Release { get; init; }
    /// <summary>The kernel was built with CONFIG_MEM_SOFT_DIRTY (still subject to the architecture).</summary>
    public required bool SoftDirtyConfigured { get; init; }
    /// <summary>New, expanded and merged VMAs are marked VM_SOFTDIRTY (3.11+).</summary>
    public required bool HasVmSoftDirty { get; init; }
    /// <summary>Swap entries carry the soft-dirty bit (3.12+); before, swap-out lost it.</summary>
    public required bool SwapKeepsSoftDirty { get; init; }
    /// <summary>mremap marks moved entries soft-dirty (3.12+).</summary>
    public required bool MremapMarksSoftDirty { get; init; }
    /// <summary>VM_SOFTDIRTY survives any VMA merge (6.19, backported to 6.18.y).</summary>
    public required bool StickySoftDirtyMerge { get; init; }
    /// <summary>Layout of /proc/PID/pagemap.</summary>
    public required PagemapLayout PagemapLayout { get; init; }
    /// <summary>/proc/PID/pagemap2 exists (the 2013 series as posted).</summary>
    public required bool HasPagemap2 { get; init; }
    public required bool HasPagemapScan { get; init; }
    public required bool HasUserfaultfd { get; init; }
    public required bool HasUffdWpAsync { get; init; }
    public required bool HasGuardRegions { get; init; }
    /// <summary>Largest value clear_refs accepts (5 = reset VmHWM, since 4.0).</summary>
    public required int ClearRefsMax { get; init; }

    public static KernelVersion Modern { get; } = new()
    {
        Name = "modern",
        Release = "6.18.44-sim",
        SoftDirtyConfigured = true,
        HasVmSoftDirty = true,
        SwapKeepsSoftDirty = true,
        MremapMarksSoftDirty = true,
        StickySoftDirtyMerge = true,
        PagemapLayout = PagemapLayout.Modern,
        HasPagemap2 = false,
        HasPagemapScan = true,
        HasUserfaultfd = true,
        HasUffdWpAsync = true,
        HasGuardRegions = true,
        ClearRefsMax = 5,
    };

    /// <summary>6.12: everything modern except the sticky merge, so VM_SOFTDIRTY can be lost (FN1).</summary>
    public static KernelVersion Linux612 { get; } = new()
    {
        Name = "linux-6.12",
        Release = "6.12.0-sim",
        SoftDirtyConfigured = true,
        HasVmSoftDirty = true,
        SwapKeepsSoftDirty = true,
        MremapMarksSoftDirty = true,
        StickySoftDirtyMerge = false,
        PagemapLayout = PagemapLayout.Modern,
        HasPagemap2 = false,
        HasPagemapScan = true,
        HasUserfaultfd = true,
        HasUffdWpAsync = true,
        HasGuardRegions = false,
        ClearRefsMax = 5,
    };

    /// <summary>
    /// The April 2013 series (v3) as posted: clear_refs 4, soft-dirty in bit 55 of /proc/PID/pagemap2,
    /// the v1 layout kept in /proc/PID/pagemap, no VM_SOFTDIRTY, no PAGEMAP_SCAN, no userfaultfd.
    /// Its blind spot: unmapping and mapping again at the same place reads clean.
    /// </summary>
    public static KernelVersion Series2013 { get; } = new()
    {
        Name = "2013",
        Release = "3.9.0-rc6-softdirty-v3",
        SoftDirtyConfigured = true,
        HasVmSoftDirty = false,
        SwapKeepsSoftDirty = false,
        MremapMarksSoftDirty = false,
        StickySoftDirtyMerge = false,
        PagemapLayout = PagemapLayout.V1,
        HasPagemap2 = true,
        HasPagemapScan = false,
        HasUserfaultfd = false,
        HasUffdWpAsync = false,
        HasGuardRegions = false,
        ClearRefsMax = 4,
    };

    public static KernelVersion Parse(string name) => name switch
    {
        "modern" or "6.18" => Modern,
        "linux-6.12" or "6.12" => Linux612,
        "2013" or "series-2013" => Series2013,
        _ => throw new ArgumentException($"unknown kernel profile '{name}' (expected modern, linux-6.12 or 2013)"),
    };
}

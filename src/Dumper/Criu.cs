
namespace CriuSharp.Dumper;

/// <summary>
/// The Dumper's entry points, one per CRIU command. Each takes an options record and returns a
/// result record; every user-fixable failure is a <see cref="DumperException"/> (or an
/// <see cref="ImageFormat.ImageFormatException"/> for a damaged image) with a one-line message.
/// </summary>
public static class Criu
{
    /// <summary>
    /// criu pre-dump: freeze, collect the pages changed since the previous pre-dump into page pipes,
    /// reset tracking, thaw, then write pagemap/pages, a thin inventory and stats-dump while the
    /// tree runs on (the host's virtual time advances by the modelled write time).
    /// </summary>
    public static DumpResult PreDump(IKernel kernel, DumpOptions options) =>
        new Checkpointer(kernel, options with { TrackMem = true }, preDump: true).Run();

    /// <summary>criu dump: freeze, write everything while frozen, then kill the tree (or leave it running).</summary>
    public static DumpResult Dump(IKernel kernel, DumpOptions options) =>
        new Checkpointer(kernel, options, preDump: false).Run();

    /// <summary>criu restore: rebuilds the tree with the same pids in <paramref name="kernel"/>.</summary>
    public static RestoreResult Restore(IKernel kernel, RestoreOptions options) =>
        kernel.Capabilities.CanRestore
            ? new Restorer(kernel, options).Run()
            : throw new KernelNotSupportedException("restoring into this kernel (the real host)");

    /// <summary>
    /// The processes a <c>restore --lazy-pages</c> left waiting for their lazy pages, found again in
    /// <paramref name="kernel"/> by the images they were restored from (for a lazy-pages daemon).
    /// </summary>
    public static IReadOnlyList<LazyTask> LazyTasks(IKernel kernel, string imagesDir) => LazyTasks(kernel, imagesDir, out _);

    /// <summary>As <see cref="LazyTasks(IKernel, string)"/>; <paramref name="arrived"/> counts restored processes whose lazy pages all arrived already (an empty list then means nothing is left to fetch).</summary>
    public static IReadOnlyList<LazyTask> LazyTasks(IKernel kernel, string imagesDir, out int arrived) =>
        new Restorer(kernel, new RestoreOptions { ImagesDir = imagesDir, LazyPages = true }).Reattach(out arrived);

    /// <summary>criu check: what tracking the kernel offers and which tracker a dump would use.</summary>
    public static CheckResult Check(IKernel kernel, TrackerKind autoFallback = TrackerKind.None)
    {
        var w = new List<DumperWarning>();
        var best = ResolveTracker(kernel, TrackerKind.Auto, w, autoFallback);
        var f = kernel.Capabilities;
        return new CheckResult(kernel.Capabilities.ArchName, kernel.Capabilities.KernelVersion, f.MemDirtyTrack, f.PagemapScan, f.PagemapScanSoftDirty,
            f.UffdWp, f.UffdWpAsync, kernel.Capabilities.HasPagemap2, best, w);
    }

    /// <summary>
    /// The tracker to use: the requested one if the kernel has it; otherwise (or for Auto) the best
    /// available — PAGEMAP_SCAN with soft-dirty, pagemap soft-dirty, uffd-wp via PAGEMAP_SCAN — and
    /// none, with a one-line warning, where nothing tracks writes.
    /// </summary>
    public static TrackerKind ResolveTracker(IKernel k, TrackerKind wanted, List<DumperWarning> warnings, TrackerKind autoFallback = TrackerKind.None, bool strict = false)
    {
        var f = k.Capabilities;
        bool uffd = f.UffdWpAsync && f.PagemapScan;
        bool Has(TrackerKind t) => t switch
        {
            TrackerKind.SoftDirty => f.MemDirtyTrack,
            TrackerKind.PagemapScan => f.PagemapScanSoftDirty || uffd,
            TrackerKind.UffdWp => uffd,
            TrackerKind.None or TrackerKind.Content => true,
            _ => false,
        };
        if (wanted != TrackerKind.Auto && Has(wanted))
            return wanted == TrackerKind.PagemapScan && !f.PagemapScanSoftDirty ? TrackerKind.UffdWp : wanted;
        if (wanted != TrackerKind.Auto && strict)
            throw new DumperException($"tracker {TrackerNames.Name(wanted)} is not available on {k.Capabilities.ArchName}/{k.Capabilities.KernelVersion} (see 'check'; the content tracker works everywhere)", kind: DumperErrorKind.Unsupported);
        TrackerKind best = f.PagemapScanSoftDirty ? TrackerKind.PagemapScan
            : f.MemDirtyTrack ? TrackerKind.SoftDirty
            : uffd ? TrackerKind.UffdWp
            : autoFallback;
        if (wanted != TrackerKind.Auto)
            warnings.Add(new DumperWarning("tracker-unavailable",
                $"tracker {TrackerNames.Name(wanted)} is not available on {k.Capabilities.ArchName}/{k.Capabilities.KernelVersion}; using {TrackerNames.Name(best)}"));
        if (best == TrackerKind.Content && wanted == TrackerKind.Auto)
            warnings.Add(new DumperWarning("content-tracker",
                $"no kernel dirty-page tracker on {k.Capabilities.ArchName}/{k.Capabilities.KernelVersion}: using the content tracker (every page is read and digested)"));
        if (best == TrackerKind.None && wanted != TrackerKind.None)
            warnings.Add(new DumperWarning("no-tracker",
                $"no dirty-page tracker on {k.Capabilities.ArchName}/{k.Capabilities.KernelVersion} (no soft-dirty, no uffd-wp): every dump copies every page"));
        return best;
    }

    /// <summary>
    /// The files an image set taken from the real host (--machine /proc) maps, with the size each
    /// had at dump time; empty for images of a simulated machine. A restore into a simulated
    /// machine imports them so that file-backed mappings see the host file's bytes.
    /// </summary>
    public static IReadOnlyList<(string Path, ulong Size)> RealHostFiles(string imagesDir)
    {
        var set = ImageFormat.ImageSet.Open(imagesDir);
        bool fromHost = set.ReadPstree().Any(pe => set.Has(ImageFormat.ImageNames.SimState((int)pe.Pid))
            && ImageFormat.SimState.IsFromRealHost(set.ReadSimState((int)pe.Pid)));
        if (!fromHost || !set.Has(ImageFormat.ImageNames.Files))
            return [];
        // Ghost files (unlinked while mapped) travel in the images; restore recreates them.
        var ghosts = set.ReadRemapFpath().Select(r => r.OrigId).ToHashSet();
        return set.ReadFiles().Where(f => f.Reg is not null && !ghosts.Contains(f.Id)).Select(f => (f.Reg.Name, f.Reg.Size)).Distinct().ToList();
    }
}

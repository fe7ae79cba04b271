using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>Dirty-page trackers (<c>--tracker</c>). <see cref="Auto"/> = the best that <c>check</c> reports.</summary>
public enum TrackerKind
{
    Auto,
    /// <summary>pagemap bit 55 (or /proc/PID/pagemap2 on the 2013 kernel) and clear_refs 4.</summary>
    SoftDirty,
    /// <summary>PAGEMAP_SCAN with the soft-dirty category (or WRITTEN where soft-dirty is missing) and clear_refs 4.</summary>
    PagemapScan,
    /// <summary>userfaultfd async write-protect, read and re-armed with PAGEMAP_SCAN.</summary>
    UffdWp,
    /// <summary>No tracking: every dump copies every page.</summary>
    None,
    /// <summary>
    /// No kernel help: every present page is read and digested (XXH3) at each dump, and only pages
    /// whose digest differs from the parent's (page-digests-PID.img) are written. Works on any
    /// kernel; misses nothing, and skips pages written back with the same bytes.
    /// </summary>
    Content,
}

public static class TrackerNames
{
    public static string Name(TrackerKind k) => k switch
    {
        TrackerKind.SoftDirty => "soft-dirty",
        TrackerKind.PagemapScan => "pagemap-scan",
        TrackerKind.UffdWp => "uffd-wp",
        TrackerKind.None => "none",
        TrackerKind.Content => "content",
        _ => "auto",
    };

    public static TrackerKind Parse(string text) => text.ToLowerInvariant() switch
    {
        "auto" or "" => TrackerKind.Auto,
        "soft-dirty" or "softdirty" => TrackerKind.SoftDirty,
        "pagemap-scan" => TrackerKind.PagemapScan,
        "uffd-wp" or "uffd" => TrackerKind.UffdWp,
        "none" => TrackerKind.None,
        "content" => TrackerKind.Content,
        _ => throw new DumperException($"unknown tracker '{text}' (expected auto, soft-dirty, pagemap-scan, uffd-wp, content or none)"),
    };
}

/// <summary>
/// How a pre-dump takes the pages (CRIU's --pre-dump-mode; the numbers are CRIU's PRE_DUMP_SPLICE
/// and PRE_DUMP_READ of criu/include/cr_options.h, which the inventory's pre_dump_mode records).
/// </summary>
public enum PreDumpMode
{
    /// <summary>The pages are collected into page pipes while the tree is frozen (CRIU's parasite vmsplice), written after the thaw. CRIU's default.</summary>
    Splice = 1,
    /// <summary>
    /// Only the pagemap is built while frozen; the pages are copied with process_vm_readv after the
    /// thaw, while the tree runs: shorter frozen time, and VMAs without PROT_READ are skipped (the
    /// syscall cannot read them; criu/mem.c).
    /// </summary>
    Read = 2,
}

/// <summary>
/// Options of <c>pre-dump</c> and <c>dump</c>, with CRIU's names: <c>-t</c> <see cref="Pid"/>,
/// <c>-D</c> <see cref="ImagesDir"/>, <c>--prev-images-dir</c> (relative to the images dir, as in
/// CRIU), <c>--track-mem</c>, <c>--leave-running</c> (dump only; a pre-dump always leaves the tree
/// running), <c>--auto-dedup</c>.
/// </summary>
public sealed record DumpOptions
{
    public required int Pid { get; init; }
    public required string ImagesDir { get; init; }
    public string? PrevImagesDir { get; init; }
    /// <summary>
    /// CRIU's --ghost-limit: the largest unlinked-but-mapped file whose bytes a dump carries in a
    /// ghost-file image (default 1 MiB, CRIU's DEFAULT_GHOST_LIMIT).
    /// </summary>
    public long GhostLimit { get; init; } = 1 << 20;
    /// <summary>Reset the tracker after collecting and record dump_uptime. Implied by pre-dump.</summary>
    public bool TrackMem { get; init; }
    public bool LeaveRunning { get; init; }
    /// <summary>
    /// CRIU's --leave-stopped (dump only): the tree is neither killed nor resumed but left stopped
    /// as SIGSTOP stops it, to be continued with SIGCONT (or killed) by whoever decides.
    /// </summary>
    public bool LeaveStopped { get; init; }
    /// <summary>--pre-dump-mode (pre-dump only).</summary>
    public PreDumpMode PreDumpMode { get; init; } = PreDumpMode.Splice;
    /// <summary>
    /// CRIU's --timeout (seconds, default 10): collecting and freezing the tree that takes longer
    /// fails the dump, and the tree is thawed. 0 sets no limit (criu/seize.c then still gives the
    /// freezer 10 s).
    /// </summary>
    public uint TimeoutSeconds { get; init; } = DefaultTimeoutSeconds;
    /// <summary>CRIU's DEFAULT_TIMEOUT.</summary>
    public const uint DefaultTimeoutSeconds = 10;
    public bool AutoDedup { get; init; }
    public TrackerKind Tracker { get; init; } = TrackerKind.Auto;
    /// <summary>What <see cref="TrackerKind.Auto"/> falls back to where the kernel tracks nothing (the real host: <see cref="TrackerKind.Content"/>).</summary>
    public TrackerKind AutoFallback { get; init; } = TrackerKind.None;
    /// <summary>An explicitly requested tracker the kernel lacks is an error instead of a fallback with a warning.</summary>
    public bool StrictTracker { get; init; }
    public PageStoreOptions PageStore { get; init; } = PageStoreOptions.Lz4();
    /// <summary>Record a checksum of every VMA's contents at freeze time (checked by restore).</summary>
    public bool RecordChecksums { get; init; } = true;
    public CostModel Cost { get; init; } = CostModel.Default;
    /// <summary>
    /// What earlier dumps of this chain sent (source side, kept between dumps): with it a pre-dump
    /// or the final dump elides written-but-unchanged pages and sends re-dirtied ones as deltas,
    /// as its settings say (a final dump only into local images: not with a page server or
    /// lazy pages).
    /// </summary>
    public SentPages? History { get; init; }
    /// <summary>Send pagemaps and pages to this page server (<c>--page-server --address --port</c>) instead of the images directory.</summary>
    public PageServer.PageServerEndpoint? PageServer { get; init; }
    /// <summary>
    /// <c>dump --lazy-pages</c>: private anonymous pages go into this store (to be served to the
    /// destination on demand) and into the pagemap as PE_LAZY entries without bytes. Ignored by
    /// pre-dumps.
    /// </summary>
    public LazyPageStore? LazyPages { get; init; }
}

/// <summary>Options of <c>restore</c>: <c>-D</c> <see cref="ImagesDir"/>.</summary>
public sealed record RestoreOptions
{
    public required string ImagesDir { get; init; }
    /// <summary>Recompute each VMA's checksum after restore and compare with the dump's.</summary>
    public bool Verify { get; init; } = true;
    public CostModel Cost { get; init; } = CostModel.Default;
    /// <summary>Pages already applied on the destination from the pre-dumps: PE_PARENT ranges come from here, not the chain.</summary>
    public PreloadedPages? Preloaded { get; init; }
    /// <summary>CRIU's --leave-stopped: the restored tree is left stopped (SIGSTOP), not resumed.</summary>
    public bool LeaveStopped { get; init; }
    /// <summary>
    /// <c>restore --lazy-pages</c>: PE_LAZY ranges are left missing and their VMAs registered with
    /// userfaultfd in missing mode (<see cref="RestoreResult.Lazy"/>); the VMA checksums of those
    /// VMAs are completed by the lazy-pages daemon once their pages arrived (<see cref="LazyTask.Checks"/>).
    /// </summary>
    public bool LazyPages { get; init; }
}

/// <summary>What a pre-dump or dump did.</summary>
public sealed record DumpResult(DumpStats Stats, IReadOnlyList<int> Pids, TrackerKind Tracker, IReadOnlyList<DumperWarning> Warnings);

/// <summary>What a restore did.</summary>
public sealed record RestoreResult(RestoreStats Stats, IReadOnlyList<int> Pids, IReadOnlyList<DumperWarning> Warnings)
{
    /// <summary>A lazy restore's processes whose memory waits for the lazy-pages daemon (empty otherwise).</summary>
    public IReadOnlyList<LazyTask> Lazy { get; init; } = [];
}

/// <summary>
/// One restored process of a lazy restore: its userfaultfd (API done, VMAs registered in missing
/// mode) and the PE_LAZY ranges of its pagemap as (address, 4 KiB pages), ascending.
/// </summary>
public sealed record LazyTask(int Pid, IUserfaultfd Uffd, IReadOnlyList<(ulong Va, ulong Pages)> Ranges)
{
    /// <summary>
    /// The checksum of each VMA with lazy pages, split: what the dump recorded, and the part the
    /// pages restored from the images already make up. The lazy pages the daemon places must make
    /// up the rest (VMA checksums are sums of page digests, so the parts add).
    /// </summary>
    public IReadOnlyList<LazyVmaCheck> Checks { get; init; } = [];
}

/// <summary>A VMA's expected checksum and the part of it already present after a lazy restore.</summary>
public sealed record LazyVmaCheck(ulong Start, ulong End, ulong Expected, ulong Present);

/// <summary>The answer of <c>check</c>: kernel features and the tracker a dump would choose.</summary>
public sealed record CheckResult(
    string Arch, string KernelVersion, bool MemDirtyTrack, bool PagemapScan, bool PagemapScanSoftDirty,
    bool UffdWp, bool UffdWpAsync, bool Pagemap2, TrackerKind BestTracker, IReadOnlyList<DumperWarning> Warnings);

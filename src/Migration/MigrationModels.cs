using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Migration;

/// <summary>
/// How memory moves: pre-copy (pre-dumps while the tree runs, then a final dump with every
/// remaining page while frozen: P.Haul), post-copy (no pre-dumps; a lazy final dump with no
/// private pages, the destination resumes at once and fetches pages on fault and in the
/// background: CRIU's <c>--lazy-pages</c>), hybrid (pre-copy iterations under the policy, then a
/// lazy final dump of what is still dirty).
/// </summary>
public enum MigrationMode { Precopy, Postcopy, Hybrid }

/// <summary>What to migrate and how.</summary>
public sealed record MigrationOptions
{
    /// <summary>Pre-copy, post-copy or hybrid (see <see cref="MigrationMode"/>).</summary>
    public MigrationMode Mode { get; init; } = MigrationMode.Precopy;
    /// <summary>
    /// Tests of a lazy restore whose source dies: the source's page server stops this long after
    /// the destination resumed (null: never).
    /// </summary>
    public ulong? SourceLostAfterNs { get; init; }
    /// <summary>Workload file (samples/*.json); spawned on the source host.</summary>
    public required string WorkloadPath { get; init; }
    /// <summary>Kernel of both hosts (arch, version profile, memory).</summary>
    public KernelConfig Kernel { get; init; } = new();
    public ConvergencePolicy Policy { get; init; } = new PhaulPolicy();
    public PageStoreOptions PageStore { get; init; } = PageStoreOptions.Lz4();
    public TrackerKind Tracker { get; init; } = TrackerKind.Auto;
    public MigrationCost Cost { get; init; } = MigrationCost.Default;
    /// <summary>Virtual time the workload runs on the source before the first pre-dump: 200 ms.</summary>
    public ulong WarmupNs { get; init; } = 200_000_000;
    /// <summary>Virtual time the restored workload runs on the destination before the second check: 100 ms.</summary>
    public ulong ContinueNs { get; init; } = 100_000_000;
    /// <summary>
    /// Where the image directories go (<c>DIR/1</c>, <c>DIR/2</c>, …, final dump last, each with a
    /// relative <c>parent</c> link); null = a temporary directory removed afterwards.
    /// </summary>
    public string? ImagesRoot { get; init; }
    /// <summary>
    /// Destination pre-loading: apply each pre-dump on the destination as it arrives, so the final
    /// restore applies only the final dump's pages (<see cref="PreloadedPages"/>).
    /// </summary>
    public bool Preload { get; init; }
    /// <summary>Called after each step (pre-dump, final dump, restore, continue) for progress bars.</summary>
    public Action<MigrationProgress>? Progress { get; init; }
    /// <summary>
    /// Pre-dumps record written-but-unchanged pages as PE_PARENT (<c>--elide-unchanged</c>). On by
    /// default: it never stored more on any sample measured and the images stay CRIU's.
    /// </summary>
    public bool ElideUnchanged { get; init; } = true;
    /// <summary>Pre-dumps send re-dirtied pages as deltas against a source-side cache of this many bytes (<c>--delta-cache</c>); 0 = off.</summary>
    public long DeltaCacheBytes { get; init; }
    /// <summary>Called once per pre-dump and for the final dump when its record is final (its decision known).</summary>
    public Action<IterationRecord>? IterationDone { get; init; }
    /// <summary>
    /// <c>--transport tcp</c>: the destination is a separate <c>migrate-service</c> process and the
    /// transfer is measured on its sockets; null (<c>--transport inproc</c>) = one process, modelled link.
    /// </summary>
    public TcpTransport? Tcp { get; init; }
}

/// <summary>A progress report: which step just finished and how many are planned at most.</summary>
public sealed record MigrationProgress(string Step, int Done, int MaxSteps);

/// <summary>One pre-dump or the final dump, as seen from the migration.</summary>
public sealed record IterationRecord
{
    /// <summary>1-based; the final dump is the last one.</summary>
    public required int Index { get; init; }
    /// <summary>"pre-dump" or "dump".</summary>
    public required string Kind { get; init; }
    public required string ImagesDir { get; init; }
    public ulong PagesScanned { get; init; }
    public ulong PagesWritten { get; init; }
    public ulong PagesSkippedParent { get; init; }
    public ulong BytesRaw { get; init; }
    public ulong BytesCompressed { get; init; }
    /// <summary>Every image file of the directory (pages + pagemap + the rest): what crosses the link.</summary>
    public ulong BytesSent { get; init; }
    /// <summary>stats-dump frozen_time, in ns.</summary>
    public ulong FrozenNs { get; init; }
    /// <summary>
    /// Time to send <see cref="BytesSent"/>: modelled at the link bandwidth (inproc), or measured
    /// on the wall clock (tcp: the dump's page stream to the destination's page server plus the
    /// copy of the other images).
    /// </summary>
    public ulong TransferNs { get; init; }
    /// <summary>tcp: page bytes the destination's page server received (raw pages or compressed blocks, as on the wire); null inproc.</summary>
    public long? PageBytesOnWire { get; init; }
    /// <summary>Virtual time from the freeze to the end of the transfer.</summary>
    public ulong DurationNs { get; init; }
    /// <summary>Pages written ÷ virtual time since the previous dump's freeze; null for the first.</summary>
    public double? DirtyRatePagesPerSecond { get; init; }
    /// <summary>The policy's answer after this pre-dump (null for the final dump).</summary>
    public string? Decision { get; init; }
    public required DumpStats Stats { get; init; }
}

/// <summary>
/// Downtime as P.Haul users ask for it (criu issue 1966): the tree is stopped from the final dump's
/// freeze until the restored tree resumes on the destination, i.e. frozen time of the final dump +
/// transfer of the final images + restore time.
/// </summary>
public sealed record Downtime(ulong FrozenNs, ulong TransferNs, ulong RestoreNs)
{
    public ulong TotalNs => FrozenNs + TransferNs + RestoreNs;

    /// <summary>
    /// tcp: of <see cref="TotalNs"/>, the time the threads doing the final dump, its transfer and the
    /// restore spent compiling .NET code (JitInfo.GetCompilationTime, both sides); null inproc,
    /// where the times are modelled.
    /// </summary>
    public ulong? JitNs { get; init; }
}

/// <summary>The workload's self-check and the Dumper's VMA checksums, after restore and after running on.</summary>
public sealed record Verification
{
    public bool Ok => ChecksumsOk && AfterRestore.Count > 0 && AfterRestore.All(r => r.Ok) && AfterContinue.All(r => r.Ok);
    public bool ChecksumsOk { get; init; }
    public int VmasVerified { get; init; }
    public string? Error { get; init; }
    public IReadOnlyList<VerifyReport> AfterRestore { get; init; } = [];
    public IReadOnlyList<VerifyReport> AfterContinue { get; init; } = [];
}

/// <summary>The post-copy phase of a post-copy or hybrid migration: the lazy-pages daemon's work.</summary>
public sealed record PostCopyResult
{
    public required LazyPagesStats Stats { get; init; }
    /// <summary>Lazy pages the final dump left on the source.</summary>
    public required long LazyPages { get; init; }
    /// <summary>Virtual time from the restored tree resuming until the last lazy page arrived (the degraded period).</summary>
    public required ulong LastPageNs { get; init; }
    /// <summary>Set when the source was lost before every page arrived (the tree was stopped).</summary>
    public string? Error { get; init; }
    /// <summary>tcp: <see cref="LastPageNs"/> and the fault latencies are wall-clock measurements, not the link model.</summary>
    public bool Measured { get; init; }
}

/// <summary>Everything a migration did and measured.</summary>
public sealed record MigrationResult
{
    public MigrationMode Mode { get; init; }
    /// <summary>"inproc" (modelled link) or "tcp" (measured on the sockets of a separate destination process).</summary>
    public string Transport { get; init; } = "inproc";
    /// <summary>tcp: where the destination ran and what it kept.</summary>
    public DestinationInfo? Destination { get; init; }
    /// <summary>The post-copy phase (null for pre-copy).</summary>
    public PostCopyResult? PostCopy { get; init; }
    public required string Workload { get; init; }
    public required string Policy { get; init; }
    public required string Compression { get; init; }
    public required int BlockKiB { get; init; }
    public required string Tracker { get; init; }
    public required string Arch { get; init; }
    public required string Kernel { get; init; }
    public required double BandwidthBytesPerSecond { get; init; }
    public required IReadOnlyList<IterationRecord> Iterations { get; init; }
    public required string StopReason { get; init; }
    public int PreDumps => Iterations.Count(i => i.Kind == "pre-dump");
    /// <summary>Every image directory's files, plus the lazy pages fetched after resume (post-copy, raw 4 KiB pages as GET answers carry them).</summary>
    public ulong TotalBytesSent => Iterations.Aggregate(0UL, (s, i) => s + i.BytesSent)
        + (PostCopy is { } pc ? (ulong)(pc.Stats.PagesByFault + pc.Stats.PagesByDrain) * 4096 : 0);
    public ulong FinalBytesSent => Iterations.Count == 0 ? 0 : Iterations[^1].BytesSent;
    public required Downtime Downtime { get; init; }
    /// <summary>QEMU's expected downtime at the last decision: remaining dirty bytes ÷ bandwidth.</summary>
    public required ulong ExpectedDowntimeNs { get; init; }
    public required ulong RemainingBytesAtDecision { get; init; }
    /// <summary>Virtual time from the first freeze to the restored tree resuming.</summary>
    public required ulong TotalTimeNs { get; init; }
    public required RestoreStats Restore { get; init; }
    public required Verification Verification { get; init; }
    /// <summary>The kept image directories' root (<c>-D</c>), or null when they were temporary.</summary>
    public string? ImagesRoot { get; init; }
    public IReadOnlyList<string> Warnings { get; init; } = [];
    public bool ElideUnchanged { get; init; }
    public long DeltaCacheBytes { get; init; }
    /// <summary>Elision and delta counters summed over the pre-dumps (zero when both were off).</summary>
    public DeltaCounters DeltaTotals => Iterations.Aggregate(new DeltaCounters(), (s, i) => i.Stats.Delta is { } d ? s.Add(d) : s);
}

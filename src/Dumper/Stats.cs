using CriuSharp.ImageFormat.Images;

namespace CriuSharp.Dumper;

/// <summary>Wall-clock durations of the real work (host time, for benchmarks; never in images).</summary>
public sealed record WallClock(TimeSpan Collect, TimeSpan Write, TimeSpan Total);

/// <summary>
/// stats-dump with CRIU's field names (criu/stats.c; times in µs of virtual time from the
/// <see cref="CostModel"/>) plus ours (dump_stats_entry extensions 1000–1006).
/// </summary>
public sealed record DumpStats
{
    public uint FreezingTime { get; init; }
    public uint FrozenTime { get; init; }
    public uint MemdumpTime { get; init; }
    public uint MemwriteTime { get; init; }
    public ulong PagesScanned { get; init; }
    public ulong PagesSkippedParent { get; init; }
    public ulong PagesWritten { get; init; }
    public ulong PagesLazy { get; init; }
    public ulong PagePipes { get; init; }
    public ulong PagePipeBufs { get; init; }
    public ulong ShpagesScanned { get; init; }
    public ulong ShpagesSkippedParent { get; init; }
    public ulong ShpagesWritten { get; init; }
    public ulong BytesRaw { get; init; }
    public ulong BytesCompressed { get; init; }
    public ulong ZeroPagesSkipped { get; init; }
    public ulong PagesStoredRaw { get; init; }
    public string Tracker { get; init; } = "none";
    public string Compression { get; init; } = "none";
    public uint CompressTime { get; init; }
    /// <summary>Elision and delta counters; null when neither was on (nothing is written to stats-dump then, nor when nothing was elided or sent as a delta; zero counters never are).</summary>
    public DeltaCounters? Delta { get; init; }
    public WallClock? WallClock { get; init; }

    public dump_stats_entry ToProto()
    {
        var p = ToProtoBase();
        // Only when a technique changed what was sent, and only the counters that are not zero:
        // stats-dump travels with the images, and an iteration that sent the same pages as
        // without elision and deltas should not cost bytes for saying so (the counters are in
        // the dump's result either way).
        if (Delta is { } d && (d.PagesElided != 0 || d.PagesDelta != 0 || d.PagesNoDigest != 0))
        {
            if (d.PagesNoDigest != 0) p.PagesNoDigest = d.PagesNoDigest;
            if (d.PagesElided != 0) p.PagesElided = d.PagesElided;
            if (d.PagesDelta != 0) p.PagesDelta = d.PagesDelta;
            if (d.DeltaBytes != 0) p.DeltaBytes = d.DeltaBytes;
            if (d.CacheHits != 0) p.DeltaCacheHits = d.CacheHits;
            if (d.CacheMisses != 0) p.DeltaCacheMisses = d.CacheMisses;
            if (d.Overflows != 0) p.DeltaOverflows = d.Overflows;
            if (d.BytesSaved != 0) p.DeltaBytesSaved = d.BytesSaved;
        }
        return p;
    }

    private dump_stats_entry ToProtoBase() => new()
    {
        FreezingTime = FreezingTime,
        FrozenTime = FrozenTime,
        MemdumpTime = MemdumpTime,
        MemwriteTime = MemwriteTime,
        PagesScanned = PagesScanned,
        PagesSkippedParent = PagesSkippedParent,
        PagesWritten = PagesWritten,
        IrmapResolve = 0,
        PagesLazy = PagesLazy,
        PagePipes = PagePipes,
        PagePipeBufs = PagePipeBufs,
        ShpagesScanned = ShpagesScanned,
        ShpagesSkippedParent = ShpagesSkippedParent,
        ShpagesWritten = ShpagesWritten,
        BytesRaw = BytesRaw,
        BytesCompressed = BytesCompressed,
        ZeroPagesSkipped = ZeroPagesSkipped,
        PagesStoredRaw = PagesStoredRaw,
        Tracker = Tracker,
        Compression = Compression,
        CompressTime = CompressTime,
    };
}

/// <summary>stats-restore with CRIU's field names plus ours (restore_stats_entry 1000–1003).</summary>
public sealed record RestoreStats
{
    public ulong PagesCompared { get; init; }
    public ulong PagesSkippedCow { get; init; }
    public uint ForkingTime { get; init; }
    public uint RestoreTime { get; init; }
    public ulong PagesRestored { get; init; }
    public ulong BytesRead { get; init; }
    public ulong ZeroPagesFilled { get; init; }
    public ulong PagesFromParent { get; init; }
    public uint DecompressTime { get; init; }
    /// <summary>VMAs whose checksum was recomputed and matched.</summary>
    public int VmasVerified { get; init; }
    public WallClock? WallClock { get; init; }

    public restore_stats_entry ToProto() => new()
    {
        PagesCompared = PagesCompared,
        PagesSkippedCow = PagesSkippedCow,
        ForkingTime = ForkingTime,
        RestoreTime = RestoreTime,
        PagesRestored = PagesRestored,
        BytesRead = BytesRead,
        ZeroPagesFilled = ZeroPagesFilled,
        PagesFromParent = PagesFromParent,
        DecompressTime = DecompressTime,
    };

    internal static uint Us(ulong ns) => (uint)Math.Min(uint.MaxValue, ns / 1000);
}

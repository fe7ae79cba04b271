using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using CriuSharp.Dumper;

namespace CriuSharp.Cli;

/// <summary>
/// One JSON dialect for every --json output: an object at the top, snake_case names as CRIU's
/// stats use, every time in nanoseconds with the unit in the key (<c>*_ns</c>), the images
/// directory always under <c>images_dir</c> (the machine directory under <c>machine</c>), and
/// errors as <c>{"error": {"exit_code", "message", "hint"}}</c> on stderr.
/// </summary>
public static class JsonOut
{
    public static readonly JsonSerializerOptions Options = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    private const ulong NsPerUs = 1000;

    private static ulong Ns(TimeSpan t) => (ulong)Math.Max(0, t.Ticks) * 100;

    private static object? Wall(WallClock? w) => w is null ? null : new
    {
        collect_ns = Ns(w.Collect),
        write_ns = Ns(w.Write),
        total_ns = Ns(w.Total),
    };

    /// <summary>stats-dump as JSON: CRIU's counters, its µs times as *_ns, then ours.</summary>
    public static object Stats(DumpStats s) => new
    {
        freezing_time_ns = s.FreezingTime * NsPerUs,
        frozen_time_ns = s.FrozenTime * NsPerUs,
        memdump_time_ns = s.MemdumpTime * NsPerUs,
        memwrite_time_ns = s.MemwriteTime * NsPerUs,
        pages_scanned = s.PagesScanned,
        pages_skipped_parent = s.PagesSkippedParent,
        pages_written = s.PagesWritten,
        pages_lazy = s.PagesLazy,
        page_pipes = s.PagePipes,
        page_pipe_bufs = s.PagePipeBufs,
        shpages_scanned = s.ShpagesScanned,
        shpages_skipped_parent = s.ShpagesSkippedParent,
        shpages_written = s.ShpagesWritten,
        bytes_raw = s.BytesRaw,
        bytes_compressed = s.BytesCompressed,
        zero_pages_skipped = s.ZeroPagesSkipped,
        pages_stored_raw = s.PagesStoredRaw,
        tracker = s.Tracker,
        compression = s.Compression,
        compress_time_ns = s.CompressTime * NsPerUs,
        // Elision and delta counters as migrate's summary names them; null when both were off.
        delta = s.Delta,
        wall_clock = Wall(s.WallClock),
    };

    /// <summary>stats-restore as JSON, in the same dialect.</summary>
    public static object Stats(RestoreStats s) => new
    {
        pages_compared = s.PagesCompared,
        pages_skipped_cow = s.PagesSkippedCow,
        forking_time_ns = s.ForkingTime * NsPerUs,
        restore_time_ns = s.RestoreTime * NsPerUs,
        pages_restored = s.PagesRestored,
        bytes_read = s.BytesRead,
        zero_pages_filled = s.ZeroPagesFilled,
        pages_from_parent = s.PagesFromParent,
        decompress_time_ns = s.DecompressTime * NsPerUs,
        vmas_verified = s.VmasVerified,
        wall_clock = Wall(s.WallClock),
    };

    /// <summary>
    /// A stats image as crit shows it (µs times named *_time, CRIU's irmap_resolve) restated in
    /// this dialect: every time becomes *_ns.
    /// </summary>
    public static JsonObject StatsFromCrit(JsonObject crit)
    {
        var o = new JsonObject();
        foreach (var (key, value) in crit)
        {
            bool time = key.EndsWith("_time", StringComparison.Ordinal) || key == "irmap_resolve";
            o[time ? key + "_ns" : key] = time && value is JsonValue v && v.TryGetValue(out ulong us) ? us * NsPerUs : value?.DeepClone();
        }
        return o;
    }

    /// <summary>The error object written to stderr under --json: one line, the last one on stderr.</summary>
    public static string Error(ExitCode code, string message, string? hint) =>
        JsonSerializer.Serialize(new { error = new { exit_code = (int)code, message, hint } }, OneLine);

    private static readonly JsonSerializerOptions OneLine = new(Options) { WriteIndented = false };
}

using CriuSharp.Dumper;
using CriuSharp.Migration;

namespace CriuSharp.Migration.Tests;

/// <summary>
/// The wait of each remote fault in a post-copy migration: the round trip, the page's transfer and
/// whatever part of a drain chunk is on the wire when the request reaches the source (criu/uffd.c
/// serves faults before asking for more of the remaining pages, but cannot recall a chunk in
/// flight). Taken from the virtual clock at the faulting operation, so faults land at different
/// points of a chunk and the waits spread out, as QEMU's postcopy blocktime does.
/// </summary>
public sealed class FaultLatencyTests : IDisposable
{
    private const string HotCold = """
        { "seed": 7, "processes": [ { "name": "hc",
            "mappings": [ { "name": "heap", "size": "8MiB" } ],
            "behaviour": { "type": "hotcold", "mapping": "heap", "exponent": 1.1, "pages_per_second": 20000, "prefill": true } } ] }
        """;

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "criu-sharp-faultlat-" + Guid.NewGuid().ToString("N"));

    public FaultLatencyTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, true);

    private static readonly MigrationCost Cost = MigrationCost.Default with { LinkBytesPerSecond = 8 << 20 };

    private PostCopyResult PostCopy()
    {
        string wl = Path.Combine(_dir, "hotcold.json");
        File.WriteAllText(wl, HotCold);
        var r = LiveMigration.Run(new MigrationOptions
        {
            Mode = MigrationMode.Postcopy,
            WorkloadPath = wl,
            Policy = ConvergencePolicy.Parse("none"),
            WarmupNs = 50_000_000,
            ContinueNs = 20_000_000,
            Cost = Cost,
        });
        Assert.True(r.Verification.Ok, r.Verification.Error);
        return Assert.IsType<PostCopyResult>(r.PostCopy);
    }

    [Fact]
    public void FaultWaits_AreADistribution_BoundedByRoundTripPageAndOneChunk()
    {
        var st = PostCopy().Stats;
        var link = Cost.LazyLink();
        ulong floor = link.RoundTripNs + link.TransferNs(4096);
        ulong ceiling = floor + link.TransferNs((ulong)link.DrainChunkBytes);
        Assert.True(st.PagesByFault > 20, $"only {st.PagesByFault} pages by fault");
        // Not one constant: faults met the drain at different points of its chunks.
        Assert.True(st.FaultLatencyP99Ns > st.FaultLatencyP50Ns, $"p50 {st.FaultLatencyP50Ns} ns = p99 {st.FaultLatencyP99Ns} ns");
        Assert.True(st.FaultLatencyMaxNs > st.FaultLatencyP50Ns);
        Assert.NotEqual(st.FaultLatencyMeanNs, st.FaultLatencyP50Ns);
        // Never faster than the round trip and the page, never slower than one chunk ahead of it
        // (a thread asleep in a fault issues no other, so its faults do not queue behind each other).
        Assert.InRange(st.FaultLatencyP50Ns, floor, ceiling);
        Assert.InRange(st.FaultLatencyMaxNs, floor, ceiling);
        Assert.True(st.StallNs >= (ulong)st.PagesByFault * floor);
    }

    [Fact]
    public void FaultWaits_AreDeterministic()
    {
        var a = PostCopy().Stats;
        var b = PostCopy().Stats;
        Assert.Equal(a, b);
    }
}

using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.Migration;

namespace CriuSharp.Migration.Tests;

/// <summary>Whole migrations of a small hot/cold workload between two in-memory hosts.</summary>
public sealed class MigrationTests : IDisposable
{
    // 8 MiB, Zipf writes at 20 000 pages/s: a small hot set, so pre-copy converges quickly.
    private const string HotCold = """
        { "seed": 7, "processes": [ { "name": "hc",
            "mappings": [ { "name": "heap", "size": "8MiB" } ],
            "behaviour": { "type": "hotcold", "mapping": "heap", "exponent": 1.1, "pages_per_second": 20000, "prefill": true } } ] }
        """;

    private readonly string _dir = Path.Combine(Path.GetTempPath(), "criu-sharp-migtest-" + Guid.NewGuid().ToString("N"));
    private readonly string _workload;

    public MigrationTests()
    {
        Directory.CreateDirectory(_dir);
        _workload = Path.Combine(_dir, "hotcold.json");
        File.WriteAllText(_workload, HotCold);
    }

    public void Dispose() => Directory.Delete(_dir, true);

    private MigrationResult Migrate(string policy, PageStoreOptions? store = null, string? keep = null, MigrationMode mode = MigrationMode.Precopy, ulong? lostAfter = null) => LiveMigration.Run(new MigrationOptions
    {
        Mode = mode,
        SourceLostAfterNs = lostAfter,
        WorkloadPath = _workload,
        Policy = ConvergencePolicy.Parse(policy),
        PageStore = store ?? PageStoreOptions.Lz4(),
        WarmupNs = 50_000_000,
        ContinueNs = 20_000_000,
        // A slow link makes the full first copy cost real downtime in stop-and-copy.
        Cost = MigrationCost.Default with { LinkBytesPerSecond = 8 << 20 },
        ImagesRoot = keep,
    });

    [Theory]
    [InlineData("phaul")]
    [InlineData("qemu")]
    [InlineData("xen")]
    [InlineData("fixed:2")]
    [InlineData("none")]
    public void EveryPolicy_VerifiesOnTheDestination(string policy)
    {
        var r = Migrate(policy);
        Assert.True(r.Verification.Ok, r.Verification.Error ?? string.Join("; ", r.Verification.AfterRestore.Concat(r.Verification.AfterContinue).Select(v => v.Detail)));
        Assert.True(r.Verification.VmasVerified > 0);
        Assert.NotEmpty(r.Verification.AfterContinue);
        Assert.Equal("dump", r.Iterations[^1].Kind);
        Assert.Equal(r.Downtime.FrozenNs + r.Downtime.TransferNs + r.Downtime.RestoreNs, r.Downtime.TotalNs);
        Assert.True(r.Downtime.RestoreNs > 0 && r.Downtime.FrozenNs > 0 && r.Downtime.TransferNs > 0);
        if (policy == "none") Assert.Equal(0, r.PreDumps);
        if (policy == "fixed:2") Assert.Equal(2, r.PreDumps);
        if (policy != "none") Assert.True(r.PreDumps >= 1);
        Assert.All(r.Iterations.SkipLast(1), i => Assert.NotNull(i.Decision));
        Assert.Null(r.Iterations[0].DirtyRatePagesPerSecond);
        Assert.All(r.Iterations.Skip(1), i => Assert.NotNull(i.DirtyRatePagesPerSecond));
    }

    [Theory]
    [InlineData("none")]
    [InlineData("phaul")]
    public void SharedFileMapping_IsOnTheDestinationsStorage(string policy)
    {
        // A log writer sweeping a MAP_SHARED file mapping: its pages are the file's, not in the
        // images; the restore maps the file by path, as CRIU does, from storage both hosts share.
        string workload = Path.Combine(_dir, "log.json");
        File.WriteAllText(workload, """
            { "seed": 3, "processes": [ { "name": "logger",
                "mappings": [ { "name": "log", "size": "1MiB", "backing": "file", "path": "/var/lib/logger/log.dat", "shared": true } ],
                "behaviour": { "type": "sequential", "mapping": "log", "pages_per_second": 5000 } } ] }
            """);
        var r = LiveMigration.Run(new MigrationOptions
        {
            WorkloadPath = workload,
            Policy = ConvergencePolicy.Parse(policy),
            WarmupNs = 50_000_000,
            ContinueNs = 20_000_000,
        });
        Assert.True(r.Verification.Ok, r.Verification.Error ?? string.Join("; ", r.Verification.AfterRestore.Concat(r.Verification.AfterContinue).Select(v => v.Detail)));
        Assert.NotEmpty(r.Verification.AfterContinue);
    }

    [Fact]
    public void PreCopy_LowersDowntime_AgainstStopAndCopy()
    {
        var none = Migrate("none");
        var phaul = Migrate("phaul");
        Assert.True(phaul.Downtime.TotalNs < none.Downtime.TotalNs / 2,
            $"phaul {phaul.Downtime.TotalNs} ns vs stop-and-copy {none.Downtime.TotalNs} ns");
        Assert.True(phaul.FinalBytesSent < none.FinalBytesSent);
        Assert.True(phaul.TotalBytesSent >= none.FinalBytesSent / 2, "pre-copy sends memory at least once");
        Assert.True(phaul.Iterations[^1].PagesSkippedParent > 0);
    }

    [Theory]
    [InlineData(MigrationMode.Postcopy)]
    [InlineData(MigrationMode.Hybrid)]
    public void LazyModes_VerifyByteExact_AndCutDowntimeBelowStopAndCopy(MigrationMode mode)
    {
        var none = Migrate("none");
        var r = Migrate("phaul", mode: mode);
        Assert.True(r.Verification.Ok, r.Verification.Error ?? string.Join("; ", r.Verification.AfterRestore.Concat(r.Verification.AfterContinue).Select(v => v.Detail)));
        var pc = Assert.IsType<PostCopyResult>(r.PostCopy);
        Assert.Null(pc.Error);
        Assert.True(pc.LazyPages > 0);
        Assert.Equal(pc.LazyPages, pc.Stats.PagesByFault + pc.Stats.PagesByDrain);
        Assert.True(pc.LastPageNs > 0);
        Assert.True(r.Verification.VmasVerified > 0);
        Assert.True(r.Downtime.TotalNs < none.Downtime.TotalNs / 2, $"{mode} {r.Downtime.TotalNs} ns vs stop-and-copy {none.Downtime.TotalNs} ns");
        if (mode == MigrationMode.Postcopy) Assert.Equal(0, r.PreDumps);
        else Assert.True(r.PreDumps >= 1);
        Assert.True(r.Iterations[^1].Stats.PagesLazy > 0);
    }

    // A parent fills its heap, forks two children, and all three write their copy-on-write copies:
    // after a pre-dump, a page the parent left alone (PE_PARENT, restored eagerly before the fork on
    // the destination) can be one a child wrote (PE_LAZY in the child's pagemap).
    private const string Fork = """
        { "seed": 6, "processes": [ { "name": "forker",
            "mappings": [ { "name": "data", "size": "8MiB" }, { "name": "shm", "size": "2MiB", "shared": true } ],
            "behaviour": { "type": "fork", "mapping": "data", "shared_mapping": "shm", "children": 2, "shared_share": 0.25, "prefill": true, "pages_per_second": 50000 } } ] }
        """;

    [Theory]
    [InlineData("fixed:1", 50)]
    [InlineData("fixed:1", 20)]
    [InlineData("fixed:2", 50)]
    [InlineData("phaul", 30)]
    public void Hybrid_ForkedChildren_LazyPagesReplaceTheInheritedOnes(string policy, int warmupMs)
    {
        string workload = Path.Combine(_dir, "fork.json");
        File.WriteAllText(workload, Fork);
        var r = LiveMigration.Run(new MigrationOptions
        {
            Mode = MigrationMode.Hybrid,
            WorkloadPath = workload,
            Policy = ConvergencePolicy.Parse(policy),
            WarmupNs = (ulong)warmupMs * 1_000_000,
            ContinueNs = 20_000_000,
        });
        Assert.True(r.Verification.Ok, r.Verification.Error ?? string.Join("; ", r.Verification.AfterRestore.Concat(r.Verification.AfterContinue).Select(v => v.Detail)));
        var pc = Assert.IsType<PostCopyResult>(r.PostCopy);
        Assert.Null(pc.Error);
        Assert.True(pc.LazyPages > 0);
        Assert.Equal(pc.LazyPages, pc.Stats.PagesByFault + pc.Stats.PagesByDrain);
        Assert.True(r.PreDumps >= 1);
    }

    /// <summary>samples/churn.json of the repository (found from the test's directory).</summary>
    private static string Churn()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "criu-sharp.sln")))
            d = d.Parent;
        return Path.Combine(d?.FullName ?? throw new DirectoryNotFoundException("repository root not found"), "samples", "churn.json");
    }

    // churn unmaps and maps again, mremaps and MADV_DONTNEEDs its slots while the lazy pages arrive:
    // the daemon must follow the userfaultfd events, or it places pages where the task changed its
    // memory and the verification fails.
    [Theory]
    [InlineData(MigrationMode.Postcopy, "phaul")]
    [InlineData(MigrationMode.Hybrid, "fixed:1")]
    public void Churn_LazyModes_FollowTheTasksMemoryChanges_AndVerify(MigrationMode mode, string policy)
    {
        var r = LiveMigration.Run(new MigrationOptions
        {
            Mode = mode,
            WorkloadPath = Churn(),
            Policy = ConvergencePolicy.Parse(policy),
            WarmupNs = 300_000_000,
            ContinueNs = 20_000_000,
        });
        Assert.True(r.Verification.Ok, r.Verification.Error ?? string.Join("; ", r.Verification.AfterRestore.Concat(r.Verification.AfterContinue).Select(v => v.Detail)));
        var pc = Assert.IsType<PostCopyResult>(r.PostCopy);
        Assert.Null(pc.Error);
        var st = pc.Stats;
        Assert.True(st.Events > 0, "the workload changed lazy memory during post-copy");
        Assert.True(st.PagesDropped + st.PagesRemapped > 0);
        // Every lazy page arrived by a fault or the drain, or was dropped because the task discarded it.
        Assert.Equal(pc.LazyPages, st.PagesByFault + st.PagesByDrain + st.PagesDropped);
        Assert.True(r.Verification.VmasVerified > 0);
    }

    [Fact]
    public void HugetlbWorkload_GetsThePoolItNeeds_OnBothMachines()
    {
        // 8 MiB of MAP_HUGETLB memory: the machines migrate boots get a pool of 4 huge pages.
        string workload = Path.Combine(_dir, "hugetlb.json");
        File.WriteAllText(workload, """
            { "seed": 21, "processes": [ { "name": "h",
                "mappings": [ { "name": "data", "size": "8MiB", "prot": "rw", "huge": "hugetlb" } ],
                "behaviour": { "type": "uniform", "mapping": "data", "prefill": true, "pages_per_second": 20000 } } ] }
            """);
        var r = LiveMigration.Run(new MigrationOptions
        {
            WorkloadPath = workload,
            Policy = ConvergencePolicy.Parse("fixed:1"),
            WarmupNs = 20_000_000,
            ContinueNs = 10_000_000,
        });
        Assert.True(r.Verification.Ok, r.Verification.Error ?? string.Join("; ", r.Verification.AfterRestore.Concat(r.Verification.AfterContinue).Select(v => v.Detail)));
        Assert.True(r.Verification.VmasVerified > 0);
    }

    [Fact]
    public void PostCopy_SourceLostMidDrain_FailsVerificationWithTheLostPages()
    {
        var r = Migrate("none", mode: MigrationMode.Postcopy, lostAfter: 2_000_000);
        Assert.False(r.Verification.Ok);
        Assert.Contains("never arrived", r.Verification.Error);
        Assert.True(r.PostCopy!.Stats.PagesLost > 0);
    }

    [Fact]
    public void Deterministic()
    {
        var a = Migrate("phaul");
        var b = Migrate("phaul");
        Assert.Equal(a.Iterations.Select(i => (i.PagesWritten, i.BytesSent, i.DurationNs)), b.Iterations.Select(i => (i.PagesWritten, i.BytesSent, i.DurationNs)));
        Assert.Equal(a.Downtime, b.Downtime);
    }

    [Fact]
    public void KeptImages_AreAParentChain_AndRerunReplacesThem()
    {
        string keep = Path.Combine(_dir, "img");
        var r = Migrate("fixed:2", keep: keep);
        Assert.Equal(keep, r.ImagesRoot);
        Assert.True(File.Exists(Path.Combine(keep, "3", "inventory.img")));
        Assert.Equal("../2", new FileInfo(Path.Combine(keep, "3", "parent")).LinkTarget);
        Assert.Equal("../1", new FileInfo(Path.Combine(keep, "2", "parent")).LinkTarget);
        // The CLI writes the summary; with it the directory counts as ours and a rerun replaces it.
        File.WriteAllText(Path.Combine(keep, LiveMigration.SummaryFile), "{}");
        var again = Migrate("none", keep: keep);
        Assert.True(again.Verification.Ok);
        Assert.False(Directory.Exists(Path.Combine(keep, "2")));
        // Anything else in it is the user's: refused.
        File.WriteAllText(Path.Combine(keep, "notes.txt"), "mine");
        Assert.Throws<DumperException>(() => Migrate("none", keep: keep));
    }

    [Fact]
    public void Compression_ShrinksWhatIsSent()
    {
        var raw = Migrate("none", PageStoreOptions.Raw);
        var lz4 = Migrate("none", PageStoreOptions.Lz4());
        Assert.True(raw.Verification.Ok && lz4.Verification.Ok);
        Assert.True(lz4.TotalBytesSent < raw.TotalBytesSent / 2);
        Assert.Equal("none", raw.Compression);
    }
}

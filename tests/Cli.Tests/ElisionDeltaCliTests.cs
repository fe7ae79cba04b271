using System.Text.Json;
using Xunit;

namespace CriuSharp.Cli.Tests;

public class ElisionDeltaCliTests : IClassFixture<MigrateScratch>
{
    private readonly MigrateScratch _s;
    public ElisionDeltaCliTests(MigrateScratch s) => _s = s;

    [Fact]
    public void Compare_ElideAndDeltaAxes_FourRunsAndCounters()
    {
        var r = CliRunner.Run(["compare", .. _s.Args("--policies", "fixed:3", "--elide", "off,on", "--delta", "off,on")]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^policy +compress +block KiB +elide +delta +pre-dumps ", lines[1]);
        Assert.Matches(@"^fixed:3 +lz4 +64 +off +off ", lines[2]);
        Assert.Matches(@"^fixed:3 +lz4 +64 +on +on ", lines[5]);

        var j = CliRunner.Run(["compare", .. _s.Args("--policies", "fixed:3", "--elide", "off", "--delta", "off,on", "--json")]);
        Assert.True(j.Code == 0, j.Err);
        var runs = JsonDocument.Parse(j.Out).RootElement.GetProperty("runs").EnumerateArray().ToList();
        Assert.Equal(2, runs.Count);
        var delta = runs[1].GetProperty("delta");
        Assert.True(delta.GetProperty("pages_delta").GetUInt64() > 0, j.Out);
        Assert.True(delta.GetProperty("cache_hits").GetUInt64() >= delta.GetProperty("pages_delta").GetUInt64());
        Assert.Equal(0UL, runs[0].GetProperty("delta").GetProperty("pages_delta").GetUInt64());
        // Stamped pages change one word per write: the deltas are far smaller than LZ4's pages.
        Assert.True(runs[1].GetProperty("total_bytes_sent").GetUInt64() < runs[0].GetProperty("total_bytes_sent").GetUInt64());
        Assert.All(runs, x => Assert.True(x.GetProperty("verified").GetBoolean()));
    }

    [Fact]
    public void Migrate_Delta_KeepsDeltaFilesAndVerifies()
    {
        string dir = Path.Combine(_s.Dir, "delta-images");
        var r = CliRunner.Run(["migrate", .. _s.Args("--policy", "fixed:3", "--delta", "--delta-cache", "1MiB", "-D", dir)]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        Assert.Contains("elision / delta", r.Out);
        Assert.Contains("cache 1024.0 KiB", r.Out);
        Assert.NotEmpty(Directory.GetFiles(dir, "deltas-*.img", SearchOption.AllDirectories));
    }

    /// <summary>
    /// With elision, deltas or both on, P.Haul never sends more bytes in total than with LZ4 alone,
    /// on the samples and recorded workloads that run fast (the checked-in hotset.c replay, hotcold
    /// with its pages' contents, and stamped samples where deltas pay and where they do not): each
    /// technique that does not pay switches itself off, counting the time it costs. The same
    /// command as the README's table, defaults included.
    /// </summary>
    [Theory]
    [InlineData("hotset-replay.json")]
    [InlineData("hotcold-trace.json")]
    [InlineData("churn.json")]
    [InlineData("kvstore.json")]
    [InlineData("idle.json")]
    [InlineData("sequential.json")]
    public void Compare_NoTechnique_SendsMoreThanLz4Alone(string sample)
    {
        var r = CliRunner.Run(["compare", "--workload", Path.Combine(CliRunner.RepoRoot(), "samples", sample),
            "--policies", "phaul", "--elide", "off,on", "--delta", "off,on", "--json"]);
        Assert.True(r.Code == 0, r.Err);
        var runs = JsonDocument.Parse(r.Out).RootElement.GetProperty("runs").EnumerateArray().ToList();
        Assert.Equal(4, runs.Count);
        Assert.False(runs[0].GetProperty("elide_unchanged").GetBoolean());
        Assert.Equal(0, runs[0].GetProperty("delta_cache_bytes").GetInt64());
        ulong alone = runs[0].GetProperty("total_bytes_sent").GetUInt64();
        foreach (var run in runs.Skip(1))
        {
            ulong total = run.GetProperty("total_bytes_sent").GetUInt64();
            Assert.True(total <= alone, $"{sample}: elide {run.GetProperty("elide_unchanged")}, delta cache {run.GetProperty("delta_cache_bytes")}: {total} B against {alone} B with LZ4 alone");
            Assert.True(run.GetProperty("verified").GetBoolean());
        }
    }

    [Theory]
    [InlineData("--elide", "maybe")]
    [InlineData("--delta", "sometimes")]
    [InlineData("--delta-cache", "12")]
    [InlineData("--delta-cache", "lots")]
    public void BadValues_AreUsageErrors(string option, string value)
    {
        var r = CliRunner.Run(["compare", .. _s.Args("--policies", "none", "--delta", "on", option, value)]);
        Assert.Equal(2, r.Code);
        Assert.Contains(option, r.Err);
        Assert.DoesNotContain("   at ", r.Err);
    }
}

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

    /// <summary>
    /// pre-dump, pre-dump --delta, dump --delta as three processes: each rebuilds its history from
    /// the parent chain (digests, bases read back from its pages), reports the counters in --json
    /// and stats-dump, and the chain restores with every VMA verified; crit still decodes every
    /// metadata image of it.
    /// </summary>
    [Fact]
    public void StandaloneChain_WithDelta_ReportsCounters_Restores_AndCritDecodes()
    {
        using var m = new TempMachine();
        string chain = Path.Combine(_s.Dir, "standalone-" + Guid.NewGuid().ToString("N"));
        var spawn = CliRunner.Run("spawn", _s.Workload, "--machine", m.Dir, "--json");
        Assert.True(spawn.Code == 0, spawn.Err);
        string pid = JsonDocument.Parse(spawn.Out).RootElement.GetProperty("pids")[0].GetInt32().ToString(System.Globalization.CultureInfo.InvariantCulture);
        var deltas = new List<JsonElement>();
        for (int i = 1; i <= 3; i++)
        {
            Assert.Equal(0, CliRunner.Run("run", "--for", "30ms", "--machine", m.Dir).Code);
            string[] prev = i == 1 ? ["--elide-unchanged"] : ["--prev-images-dir", $"../{i - 1}", "--delta", "--elide-unchanged"];
            var r = CliRunner.Run([i < 3 ? "pre-dump" : "dump", "-t", pid, "-D", Path.Combine(chain, $"{i}"), "--machine", m.Dir, "--json", .. prev]);
            Assert.True(r.Code == 0, r.Err);
            deltas.Add(JsonDocument.Parse(r.Out).RootElement.GetProperty("stats").GetProperty("delta").Clone());
        }
        Assert.Equal(0UL, deltas[0].GetProperty("pages_delta").GetUInt64());
        foreach (var d in deltas.Skip(1))
        {
            // The [vdso] pages are dumped every time with the same bytes; the hot pages' stamps change a word.
            Assert.True(d.GetProperty("pages_elided").GetUInt64() >= 2, d.ToString());
            Assert.True(d.GetProperty("pages_delta").GetUInt64() > 0, d.ToString());
            Assert.True(d.GetProperty("cache_hits").GetUInt64() >= d.GetProperty("pages_delta").GetUInt64());
            Assert.Equal(0UL, d.GetProperty("pages_no_digest").GetUInt64());
        }
        Assert.NotEmpty(Directory.GetFiles(Path.Combine(chain, "2"), "deltas-*.img"));
        var stats = ImageFormat.ImageSet.Open(Path.Combine(chain, "3")).ReadDumpStats()!;
        Assert.Equal(deltas[2].GetProperty("pages_delta").GetUInt64(), stats.PagesDelta);

        using var dest = new TempMachine();
        var restored = CliRunner.Run("restore", "-D", Path.Combine(chain, "3"), "--machine", dest.Dir, "--json");
        Assert.True(restored.Code == 0, restored.Err);
        Assert.True(JsonDocument.Parse(restored.Out).RootElement.GetProperty("stats").GetProperty("vmas_verified").GetInt32() > 0);

        foreach (var dir in new[] { "1", "2", "3" })
            foreach (var image in new[] { "inventory.img", $"pagemap-{pid}.img", "stats-dump" }.Concat(dir == "3" ? ["pstree.img", $"core-{pid}.img", $"mm-{pid}.img"] : []))
            {
                var psi = new System.Diagnostics.ProcessStartInfo("/usr/bin/crit", ["decode", "-i", Path.Combine(chain, dir, image)]) { RedirectStandardOutput = true, RedirectStandardError = true };
                using var p = System.Diagnostics.Process.Start(psi)!;
                p.StandardOutput.ReadToEnd();
                string err = p.StandardError.ReadToEnd();
                p.WaitForExit();
                Assert.True(p.ExitCode == 0, $"crit decode {dir}/{image}: {err}");
            }
    }

    [Fact]
    public void StandalonePreDump_DeltaWithPageServer_IsAUsageError()
    {
        var r = CliRunner.Run("pre-dump", "-t", "1", "-D", Path.Combine(_s.Dir, "ps-delta"), "--page-server", "--address", "127.0.0.1", "--port", "1", "--delta");
        Assert.Equal(2, r.Code);
        Assert.Contains("--delta with --page-server", r.Err);
        Assert.Single(r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("criu-sharp:"));
    }
}

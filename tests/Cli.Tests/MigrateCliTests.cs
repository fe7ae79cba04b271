using System.Diagnostics;
using System.Text.Json;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>A small hot/cold workload and a scratch directory, shared by the migrate/compare/report tests.</summary>
public sealed class MigrateScratch : IDisposable
{
    // 8 MiB, Zipf writes at 20 000 pages/s: small and quick, yet pre-copy has something to do.
    public const string HotCold = """
        { "seed": 7, "processes": [ { "name": "hc",
            "mappings": [ { "name": "heap", "size": "8MiB" } ],
            "behaviour": { "type": "hotcold", "mapping": "heap", "exponent": 1.1, "pages_per_second": 20000, "prefill": true } } ] }
        """;

    public string Dir { get; } = Path.Combine(Path.GetTempPath(), "criu-sharp-migcli-" + Guid.NewGuid().ToString("N"));
    public string Workload { get; }

    public MigrateScratch()
    {
        Directory.CreateDirectory(Dir);
        Workload = Path.Combine(Dir, "hotcold.json");
        File.WriteAllText(Workload, HotCold);
    }

    /// <summary>Short virtual times and a slow link, so stop-and-copy has a real cost.</summary>
    public string[] Args(params string[] extra) =>
        ["--workload", Workload, "--warmup", "50ms", "--run-after", "20ms", "--bandwidth", "8MiB/s", .. extra];

    public void Dispose() => Directory.Delete(Dir, true);
}

public class MigrateCliTests : IClassFixture<MigrateScratch>
{
    private readonly MigrateScratch _s;
    public MigrateCliTests(MigrateScratch s) => _s = s;

    [Fact]
    public void Migrate_Json_HasIterationsSummaryAndVerification()
    {
        var r = CliRunner.Run(["migrate", .. _s.Args("--json")]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        var root = JsonDocument.Parse(r.Out).RootElement;
        Assert.Equal("phaul", root.GetProperty("policy").GetString());
        Assert.Equal("lz4", root.GetProperty("compression").GetString());
        var its = root.GetProperty("iterations").EnumerateArray().ToList();
        Assert.True(its.Count >= 2);
        Assert.Equal("dump", its[^1].GetProperty("kind").GetString());
        foreach (var name in new[] { "pages_scanned", "pages_written", "pages_skipped_parent", "bytes_raw", "bytes_compressed", "bytes_sent", "duration_ns", "dirty_rate_pages_per_second", "decision", "stats" })
            Assert.True(its[0].TryGetProperty(name, out _), name);
        Assert.Equal(JsonValueKind.Null, its[0].GetProperty("dirty_rate_pages_per_second").ValueKind);
        Assert.True(its[1].GetProperty("dirty_rate_pages_per_second").GetDouble() > 0);
        Assert.True(its[0].GetProperty("stats").TryGetProperty("frozen_time_ns", out _)); // CRIU's stats names, times in ns
        var sum = root.GetProperty("summary");
        var dt = sum.GetProperty("downtime");
        Assert.Equal(sum.GetProperty("downtime_ns").GetUInt64(),
            dt.GetProperty("frozen_ns").GetUInt64() + dt.GetProperty("transfer_ns").GetUInt64() + dt.GetProperty("restore_ns").GetUInt64());
        Assert.Equal(its.Count - 1, sum.GetProperty("pre_dumps").GetInt32());
        Assert.Equal(its.Sum(i => (long)i.GetProperty("bytes_sent").GetUInt64()), (long)sum.GetProperty("total_bytes_sent").GetUInt64());
        Assert.True(sum.GetProperty("expected_downtime_ns").GetUInt64() > 0);
        Assert.True(sum.GetProperty("verified").GetBoolean());
        Assert.True(root.GetProperty("verification").GetProperty("vmas_verified").GetInt32() > 0);
        Assert.True(root.GetProperty("verification").GetProperty("after_run")[0].GetProperty("ok").GetBoolean());
    }

    [Theory]
    [InlineData("postcopy")]
    [InlineData("hybrid")]
    public void Migrate_LazyModes_ReportFaultsDrainAndLatency(string mode)
    {
        var r = CliRunner.Run(["migrate", .. _s.Args("--mode", mode, "--json")]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        var root = JsonDocument.Parse(r.Out).RootElement;
        Assert.Equal(mode, root.GetProperty("mode").GetString());
        var pc = root.GetProperty("post_copy");
        long lazy = pc.GetProperty("lazy_pages").GetInt64();
        Assert.True(lazy > 0);
        Assert.Equal(lazy, pc.GetProperty("pages_by_fault").GetInt64() + pc.GetProperty("pages_by_drain").GetInt64());
        foreach (var name in new[] { "faults", "zero_pages", "fault_latency_mean_ns", "fault_latency_p50_ns", "fault_latency_p99_ns", "fault_latency_max_ns", "stall_ns", "last_page_ns", "pages_lost" })
            Assert.True(pc.TryGetProperty(name, out _), name);
        Assert.True(root.GetProperty("summary").GetProperty("verified").GetBoolean());
        var text = CliRunner.Run(["migrate", .. _s.Args("--mode", mode)]);
        Assert.True(text.Code == 0, text.Err + text.Out);
        Assert.Contains(text.Out.Split('\n'), l => l.StartsWith("post-copy ") && l.Contains("by the drain"));
        Assert.Contains(text.Out.Split('\n'), l => l.StartsWith("fault latency ") && l.Contains("p99"));
    }

    [Fact]
    public void Compare_Modes_AddAModeAndALastPageColumn()
    {
        var r = CliRunner.Run(["compare", .. _s.Args("--policies", "phaul", "--modes", "precopy,postcopy,hybrid", "--json")]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        var runs = JsonDocument.Parse(r.Out).RootElement.GetProperty("runs").EnumerateArray().ToList();
        Assert.Equal(["precopy", "postcopy", "hybrid"], runs.Select(x => x.GetProperty("mode").GetString()));
        Assert.Equal(JsonValueKind.Null, runs[0].GetProperty("post_copy").ValueKind);
        Assert.True(runs[1].GetProperty("post_copy").GetProperty("last_page_ns").GetUInt64() > 0);
        var text = CliRunner.Run(["compare", .. _s.Args("--policies", "phaul", "--modes", "precopy,hybrid")]);
        Assert.True(text.Code == 0, text.Err + text.Out);
        Assert.Matches(@"^mode +policy .* last page$", text.Out.Split('\n')[1]);
    }

    [Fact]
    public void Migrate_UnknownMode_IsAUsageError()
    {
        var r = CliRunner.Run(["migrate", .. _s.Args("--mode", "lazy")]);
        Assert.Equal(2, r.Code);
        Assert.Contains("'lazy'", r.Err);
    }

    [Fact]
    public void Migrate_Text_IsATableThenTheSummary()
    {
        var r = CliRunner.Run(["migrate", .. _s.Args("--policy", "fixed:2")]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        var lines = r.Out.Split('\n');
        Assert.StartsWith("migrate ", lines[0]);
        Assert.Matches(@"^ *# +kind +scanned +written +in parent +raw +stored +sent +duration +dirty rate/s +decision$", lines[1]);
        Assert.Matches(@"^ *1 +pre-dump ", lines[2]);
        Assert.Matches(@"^ *3 +dump ", lines[4]);
        Assert.Contains(lines, l => l.StartsWith("pre-dumps ") && l.Contains("2 (stop: 2 pre-dumps done)"));
        Assert.Contains(lines, l => l.StartsWith("downtime ") && l.Contains("= frozen ") && l.Contains("+ transfer ") && l.Contains("+ restore "));
        Assert.Contains(lines, l => l.StartsWith("expected downtime "));
        Assert.Contains(lines, l => l.StartsWith("verification ") && l.Contains("ok"));
        Assert.DoesNotContain("\u001b[", r.Out); // no ANSI when captured
    }

    [Fact]
    public void Migrate_KeepsImages_ForShowAndX()
    {
        string keep = Path.Combine(_s.Dir, "keep");
        var r = CliRunner.Run(["migrate", .. _s.Args("--policy", "fixed:1", "-D", keep, "--compress", "none")]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        Assert.True(File.Exists(Path.Combine(keep, "migration.json")));
        Assert.Equal("../1", new FileInfo(Path.Combine(keep, "2", "parent")).LinkTarget);
        var x = CliRunner.Run("x", Path.Combine(keep, "2"), "rss");
        Assert.True(x.Code == 0, x.Err);
        var again = CliRunner.Run(["migrate", .. _s.Args("--policy", "none", "-D", keep)]);
        Assert.True(again.Code == 0, again.Err);
        Assert.False(Directory.Exists(Path.Combine(keep, "2")));
    }

    [Theory]
    [InlineData(2, "--policy", "sometimes")]
    [InlineData(2, "--policy", "fixed:x")]
    [InlineData(2, "--bandwidth", "fast")]
    [InlineData(2, "--block-size", "5")]
    [InlineData(2, "--warmup", "soon")]
    public void Migrate_BadArguments_AreUsageErrors(int code, string option, string value)
    {
        var r = CliRunner.Run(["migrate", .. _s.Args(option, value)]);
        Assert.Equal(code, r.Code);
        Assert.Single(r.ErrLines, l => l.StartsWith("criu-sharp:"));
    }

    [Fact]
    public void Migrate_MissingWorkload_IsBadInput()
    {
        var r = CliRunner.Run("migrate", "--workload", "/nonexistent/w.json");
        Assert.Equal((int)ExitCode.BadInput, r.Code);
        Assert.Contains("no such file", r.Err);
    }

    [Theory]
    [InlineData("128MiB/s", 134217728.0)]
    [InlineData("1GB/s", 1e9)]
    [InlineData("10Gbit/s", 1.25e9)]
    [InlineData("500Mbit/s", 62.5e6)]
    [InlineData("1.5 MiB/s", 1572864.0)]
    [InlineData("4096", 4096.0)]
    public void Rates(string text, double bps) => Assert.Equal(bps, MigrationArgs.ParseRate(text, "--bandwidth"), 3);

    [Fact]
    public void Compare_PrintsOneRowPerCell_AndJson()
    {
        var r = CliRunner.Run(["compare", .. _s.Args("--policies", "phaul,none", "--compress", "lz4,none")]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^policy +compress +block KiB +pre-dumps +total sent +final dump +downtime +expected +total time +verified$", lines[1]);
        Assert.Equal(4, lines.Length - 2);
        Assert.Matches(@"^phaul +lz4 +64 ", lines[2]);
        Assert.Matches(@"^none +none +- +0 ", lines[5]);
        Assert.All(lines.Skip(2), l => Assert.EndsWith("yes", l));

        var j = CliRunner.Run(["compare", .. _s.Args("--policies", "phaul:max-iters=2,min-pages=10,none", "--json")]);
        Assert.True(j.Code == 0, j.Err);
        var runs = JsonDocument.Parse(j.Out).RootElement.GetProperty("runs").EnumerateArray().ToList();
        Assert.Equal(2, runs.Count);
        Assert.Equal("phaul:min-pages=10,max-grow=10,max-iters=2", runs[0].GetProperty("policy").GetString());
        // Pre-copy leaves less to do while frozen than stop-and-copy.
        Assert.True(runs[0].GetProperty("downtime_ns").GetUInt64() < runs[1].GetProperty("downtime_ns").GetUInt64());
        Assert.True(runs[0].GetProperty("verified").GetBoolean());
    }

    [Fact]
    public void Report_WritesOneHtmlFileWithSvgCharts()
    {
        string html = Path.Combine(_s.Dir, "report.html");
        var r = CliRunner.Run(["report", .. _s.Args("--policies", "phaul,fixed:2,none", "-o", html)]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        string text = File.ReadAllText(html);
        Assert.StartsWith("<!DOCTYPE html>", text);
        Assert.DoesNotContain("<script", text);
        Assert.DoesNotContain("src=", text); // self-contained
        foreach (var id in new[] { "dirty-pages", "bytes-sent", "downtime", "bytes-by-store" })
            Assert.Contains($"<figure class=\"chart\" id=\"{id}\" data-series=\"3\"", text);
        // XML-wellformed SVG: each chart parses on its own.
        foreach (System.Text.RegularExpressions.Match m in System.Text.RegularExpressions.Regex.Matches(text, "<svg .*?</svg>", System.Text.RegularExpressions.RegexOptions.Singleline))
            System.Xml.Linq.XElement.Parse(m.Value);
        Assert.False(File.Exists(Path.Combine(_s.Dir, ".report.html.tmp"))); // no temporary left behind
        Assert.Contains("wrote " + html, r.Out);
    }
}

using System.Text.Json;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>compare and report --transport tcp: each run is a migrate --transport tcp with its own destination process on loopback.</summary>
public class CompareTcpTests : IClassFixture<MigrateScratch>
{
    private readonly MigrateScratch _s;
    public CompareTcpTests(MigrateScratch s) => _s = s;

    [Fact]
    public void Compare_OverTcp_EveryRunMeasuredAndVerified_JsonSaysTcp()
    {
        var r = CliRunner.Run(["compare", .. _s.Args("--policies", "fixed:1,none", "--transport", "tcp", "--json")]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        var root = JsonDocument.Parse(r.Out).RootElement;
        Assert.Equal("tcp", root.GetProperty("transport").GetString());
        var runs = root.GetProperty("runs").EnumerateArray().ToList();
        Assert.Equal(2, runs.Count);
        foreach (var run in runs)
        {
            Assert.Equal("tcp", run.GetProperty("transport").GetString());
            Assert.True(run.GetProperty("verified").GetBoolean());
            // Measured, so a compilation share is reported (inproc has none).
            Assert.Equal(JsonValueKind.Number, run.GetProperty("downtime").GetProperty("jit_ns").ValueKind);
        }
        Assert.Equal(new long[] { 1, 0 }, runs.Select(x => (long)x.GetProperty("pre_dumps").GetInt32()));

        var inproc = CliRunner.Run(["compare", .. _s.Args("--policies", "none", "--json")]);
        Assert.True(inproc.Code == 0, inproc.Err);
        var ir = JsonDocument.Parse(inproc.Out).RootElement;
        Assert.Equal("inproc", ir.GetProperty("transport").GetString());
        Assert.Equal(JsonValueKind.Null, ir.GetProperty("runs")[0].GetProperty("downtime").GetProperty("jit_ns").ValueKind);
    }

    [Fact]
    public void Report_OverTcp_SaysTheDowntimeWasMeasured()
    {
        string html = Path.Combine(_s.Dir, "report-tcp-" + Guid.NewGuid().ToString("N") + ".html");
        var r = CliRunner.Run(["report", .. _s.Args("--policies", "fixed:1", "--transport", "tcp", "-o", html)]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        Assert.Contains("measured on the wall clock", File.ReadAllText(html));
    }

    [Fact]
    public void Compare_UnknownTransport_IsAUsageError()
    {
        var r = CliRunner.Run(["compare", .. _s.Args("--policies", "none", "--transport", "udp")]);
        Assert.Equal(2, r.Code);
        Assert.StartsWith("criu-sharp: ", r.ErrLines[0]);
    }
}

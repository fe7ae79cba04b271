using System.Diagnostics;
using System.Text.Json;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>record, inspect and trace workloads through the command line, as a user drives them.</summary>
public class TraceCliTests
{
    private static string Sample(string name) => Path.Combine(CliRunner.RepoRoot(), "samples", name);

    [Fact]
    public void RecordInspectReplayVerify_AcrossCommands()
    {
        using var m = new TempMachine();
        using var r = new TempMachine();
        Assert.Equal(0, CliRunner.Run("spawn", Sample("churn.json"), "--machine", m.Dir).Code);
        CliRunner.Run("run", "--for", "20ms", "--machine", m.Dir);
        string trace = Path.Combine(m.Dir, "trace");
        var rec = CliRunner.Run("record", "-t", "1000", "--machine", m.Dir, "--interval", "10ms", "--for", "40ms", "-o", trace, "--json");
        Assert.True(rec.Code == 0, rec.Err);
        var j = JsonDocument.Parse(rec.Out).RootElement;
        Assert.Equal(5, j.GetProperty("samples").GetInt32());
        Assert.False(j.GetProperty("ended_early").GetBoolean());
        Assert.Equal(5, j.GetProperty("pages_written").GetArrayLength());

        var inspect = CliRunner.Run("inspect", trace, "--format", "json");
        Assert.True(inspect.Code == 0, inspect.Err);
        var images = JsonDocument.Parse(inspect.Out).RootElement.GetProperty("images");
        Assert.Equal(5, images.GetArrayLength());
        Assert.True(images[4].GetProperty("total").GetProperty("in_parent").GetUInt64() > 0);
        Assert.Contains("└── 4 t=40 ms", CliRunner.Run("inspect", trace).Out);

        // The replay survives the machine being reopened by every command.
        string wl = Path.Combine(m.Dir, "replay.json");
        File.WriteAllText(wl, """{ "processes": [ { "behaviour": { "type": "trace", "path": "trace" } } ] }""");
        Assert.Equal(0, CliRunner.Run("spawn", wl, "--machine", r.Dir).Code);
        for (int i = 0; i < 5; i++)
        {
            var v = CliRunner.Run("verify", "--machine", r.Dir);
            Assert.True(v.Code == 0, v.Out + v.Err);
            CliRunner.Run("run", "--for", "10ms", "--machine", r.Dir);
        }
    }

    [Fact]
    public void DamagedTrace_OneLineNamingTheFile_Exit4()
    {
        using var m = new TempMachine();
        Assert.Equal(0, CliRunner.Run("spawn", Sample("idle.json"), "--machine", m.Dir).Code);
        string trace = Path.Combine(m.Dir, "t");
        Assert.Equal(0, CliRunner.Run("record", "-t", "1000", "--machine", m.Dir, "--interval", "10ms", "--for", "20ms", "-o", trace).Code);
        string index = Path.Combine(trace, "trace.json");
        File.WriteAllText(index, File.ReadAllText(index).Replace("\"version\": 1", "\"version\": 9"));
        string wl = Path.Combine(m.Dir, "replay.json");
        File.WriteAllText(wl, """{ "processes": [ { "behaviour": { "type": "trace", "path": "t" } } ] }""");
        using var r = new TempMachine();
        var res = CliRunner.Run("spawn", wl, "--machine", r.Dir);
        Assert.Equal(4, res.Code);
        Assert.Single(res.ErrLines);
        Assert.Contains(index, res.Err);

        var ins = CliRunner.Run("inspect", trace);
        Assert.Equal(4, ins.Code);
        Assert.Single(ins.ErrLines);
    }

    [Fact]
    public void ContentKinds_ChangeImageSizes_AndVerify()
    {
        using var m = new TempMachine();
        string dir = m.Dir;
        Directory.CreateDirectory(dir);
        long Stored(string content)
        {
            string wl = Path.Combine(dir, $"u-{content.Replace(':', '-').Replace('%', 'p')}.json");
            File.WriteAllText(wl, $$"""{ "processes": [ { "mappings": [ { "name": "d", "size": "4MiB" } ], "behaviour": { "type": "uniform", "pages_per_second": 20000, "content": "{{content}}" } } ] }""");
            string mach = Path.Combine(dir, "m-" + Guid.NewGuid().ToString("N")[..6]);
            Assert.Equal(0, CliRunner.Run("spawn", wl, "--machine", mach).Code);
            CliRunner.Run("run", "--for", "20ms", "--machine", mach);
            var v = CliRunner.Run("verify", "--machine", mach);
            Assert.True(v.Code == 0, v.Out + v.Err);
            var d = CliRunner.Run("pre-dump", "-t", "1000", "-D", Path.Combine(mach, "img"), "--machine", mach, "--json");
            Assert.True(d.Code == 0, d.Err);
            return JsonDocument.Parse(d.Out).RootElement.GetProperty("stats").GetProperty("bytes_compressed").GetInt64();
        }
        long stamped = Stored("stamped"), half = Stored("zero-fill:50%"), none = Stored("zero-fill:0%");
        Assert.True(stamped * 10 < half, $"{stamped} vs {half}");
        Assert.True(half < none, $"{half} vs {none}");
    }
}

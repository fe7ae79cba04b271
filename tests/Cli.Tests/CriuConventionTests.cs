using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>What a CRIU user reaches for: logs, -V, -D defaulting to the current directory, show FILE, check's names, dedup, --pidfile.</summary>
public class CriuConventionTests
{
    private static string Spawn(TempMachine m, MigrateScratch s)
    {
        var spawn = CliRunner.Run("spawn", s.Workload, "--machine", m.Dir, "--json");
        Assert.True(spawn.Code == 0, spawn.Err);
        return JsonDocument.Parse(spawn.Out).RootElement.GetProperty("pids")[0].GetInt32().ToString();
    }

    [Fact]
    public void NoArguments_ListsTheVerbs_AndVersionAnswersToV()
    {
        var none = CliRunner.Run();
        Assert.Equal((int)ExitCode.Usage, none.Code);
        foreach (var verb in new[] { "spawn", "pre-dump", "dump", "restore", "dedup", "check", "show" })
            Assert.Contains(verb, none.Out);
        var v = CliRunner.Run("-V");
        Assert.Equal(0, v.Code);
        Assert.Matches(@"^\d+\.\d+", v.Out.Trim());
        Assert.Equal(v.Out, CliRunner.Run("--version").Out);
    }

    [Fact]
    public void LogFile_IsRelativeToTheImagesDir_WithLevelsTimestampsAndPids()
    {
        using var s = new MigrateScratch();
        using var m = new TempMachine();
        string pid = Spawn(m, s);
        string dir = Path.Combine(s.Dir, "d");
        var r = CliRunner.Run("dump", "-t", pid, "-D", dir, "-o", "dump.log", "-v4", "--log-pid", "--leave-running", "--machine", m.Dir);
        Assert.True(r.Code == 0, r.Err);
        var lines = File.ReadAllLines(Path.Combine(dir, "dump.log"));
        Assert.All(lines, l => Assert.Matches(@"^\(\d{2}\.\d{6}\) +\d+: ", l));
        Assert.Contains(lines, l => l.EndsWith("Dump finished successfully"));

        // -v0 keeps only messages: nothing of the info lines; the images are still replaced.
        var quiet = CliRunner.Run("dump", "-t", pid, "-D", dir, "-o", "dump.log", "-v0", "--leave-running", "--machine", m.Dir);
        Assert.True(quiet.Code == 0, quiet.Err);
        Assert.Empty(File.ReadAllLines(Path.Combine(dir, "dump.log")));

        // Without -o, info lines (-v3) go to stderr, never to stdout.
        var loud = CliRunner.Run("pre-dump", "-t", pid, "-D", Path.Combine(s.Dir, "p"), "-v", "--machine", m.Dir, "--json");
        Assert.True(loud.Code == 0, loud.Err);
        Assert.Contains(loud.ErrLines, l => Regex.IsMatch(l, @"^\(\d{2}\.\d{6}\) Pre-dump finished successfully$"));
        JsonDocument.Parse(loud.Out);
    }

    [Fact]
    public void StackTrace_HasItsOwnSwitch()
    {
        var plain = CliRunner.Run("show", "/nonexistent.img");
        Assert.DoesNotContain("   at ", plain.Err);
        var traced = CliRunner.Run("show", "/nonexistent.img", "--stack-trace");
        Assert.Contains("   at ", traced.Err);
    }

    [Fact]
    public void GhostLimit_TakesCriusSizes()
    {
        using var s = new MigrateScratch();
        using var m = new TempMachine();
        string pid = Spawn(m, s);
        var bad = CliRunner.Run("dump", "-t", pid, "-R", "-D", Path.Combine(s.Dir, "bad"), "--ghost-limit", "lots", "--machine", m.Dir);
        Assert.Equal((int)ExitCode.Usage, bad.Code);
        Assert.Contains("'lots' is not a size", bad.Err);
        var ok = CliRunner.Run("dump", "-t", pid, "-R", "-D", Path.Combine(s.Dir, "ok"), "--ghost-limit", "2M", "--machine", m.Dir);
        Assert.True(ok.Code == 0, ok.Err);
    }

    [Fact]
    public void ImagesDir_DefaultsToTheCurrentDirectory_AndShowTakesThePath()
    {
        using var s = new MigrateScratch();
        using var m = new TempMachine();
        string pid = Spawn(m, s);
        string cwd = Path.Combine(s.Dir, "cwd");
        Directory.CreateDirectory(cwd);
        var r = CliRunner.RunProcess(cwd, "dump", "-t", pid, "--leave-running", "--machine", m.Dir);
        Assert.True(r.Code == 0, r.Err);
        Assert.True(File.Exists(Path.Combine(cwd, "inventory.img")));
        var show = CliRunner.Run("show", Path.Combine(cwd, $"core-{pid}.img"));
        Assert.True(show.Code == 0, show.Err);
        Assert.Contains("\"magic\": \"CORE\"", show.Out);
    }

    [Fact]
    public void Check_TakesCriusFeatureNames()
    {
        Assert.Equal(0, CliRunner.Run("check", "--feature", "uffd", "--kernel", "modern").Code);
        Assert.Equal(0, CliRunner.Run("check", "--feature", "uffd-noncoop", "--kernel", "modern").Code);
        Assert.Equal((int)ExitCode.Unsupported, CliRunner.Run("check", "--feature", "uffd", "--kernel", "2013").Code);
        var unknown = CliRunner.Run("check", "--feature", "no_such_feature");
        Assert.Equal((int)ExitCode.Usage, unknown.Code);
        Assert.Contains("mem_dirty_track", unknown.Err);
        var all = CliRunner.Run("check", "--all", "--kernel", "2013");
        Assert.Equal(0, all.Code);
        Assert.Contains("Looks good but some kernel features are missing", all.Out);
        Assert.Contains("Looks good.", CliRunner.Run("check", "--extra", "--kernel", "modern").Out);
    }

    [Fact]
    public void Dedup_PunchesSupersededPagesOutOfTheParent_AndRestoreWritesThePidfile()
    {
        using var s = new MigrateScratch();
        using var m = new TempMachine();
        string pid = Spawn(m, s);
        string p1 = Path.Combine(s.Dir, "1"), d2 = Path.Combine(s.Dir, "2");
        Assert.Equal(0, CliRunner.Run("pre-dump", "-t", pid, "-D", p1, "--compress", "none", "--machine", m.Dir).Code);
        Assert.Equal(0, CliRunner.Run("run", "--for", "50ms", "--machine", m.Dir).Code);
        Assert.Equal(0, CliRunner.Run("dump", "-t", pid, "-D", d2, "--prev-images-dir", "../1", "--compress", "none", "--machine", m.Dir).Code);
        var dedup = CliRunner.Run("dedup", "-D", d2, "--json");
        Assert.True(dedup.Code == 0, dedup.Err);
        Assert.True(JsonDocument.Parse(dedup.Out).RootElement.GetProperty("bytes_punched").GetInt64() > 0, dedup.Out);

        using var dest = new TempMachine();
        string pidfile = Path.Combine(s.Dir, "restored.pid");
        var restore = CliRunner.Run("restore", "-D", d2, "--pidfile", pidfile, "--machine", dest.Dir);
        Assert.True(restore.Code == 0, restore.Err);
        Assert.Equal(pid, File.ReadAllText(pidfile));
        Assert.Equal(0, CliRunner.Run("verify", "--machine", dest.Dir).Code);
    }
}

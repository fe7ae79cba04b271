using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>Problems users met on a fresh clone; each test failed before its fix.</summary>
public class ReportedBugTests
{
    private static string Sample(string name) => Path.Combine(CliRunner.RepoRoot(), "samples", name);

    private static int SpawnUniform(TempMachine m)
    {
        var spawn = CliRunner.Run("spawn", Sample("uniform.json"), "--machine", m.Dir, "--json");
        Assert.True(spawn.Code == 0, spawn.Err);
        return JsonDocument.Parse(spawn.Out).RootElement.GetProperty("pids")[0].GetInt32();
    }

    [Theory]
    [InlineData("1e99s")]
    [InlineData("9223372036854775807ns")]
    [InlineData("1e10s")]
    [InlineData("1e20s")]
    [InlineData("99999999999999999999s")]
    [InlineData("86400.001s")]
    public void Run_DurationBeyondTheLimit_IsRefusedNamingIt(string duration)
    {
        using var m = new TempMachine();
        SpawnUniform(m);
        var r = CliRunner.Run("run", "--for", duration, "--machine", m.Dir, "--json");
        Assert.Equal((int)ExitCode.Usage, r.Code);
        Assert.Single(r.ErrLines);
        Assert.Contains("24h (86400s)", r.Err);
        Assert.Equal("", r.Out);
    }

    [Fact]
    public void Run_NegativeDuration_SaysNegative()
    {
        using var m = new TempMachine();
        SpawnUniform(m);
        var r = CliRunner.Run("run", "--for", "-1s", "--machine", m.Dir);
        Assert.Equal((int)ExitCode.Usage, r.Code);
        Assert.Contains("must not be negative", r.Err);
        Assert.DoesNotContain("unrecognized option", r.Err);
    }

    [Fact]
    public void ReadOnlyMachineDirectory_SaysReadOnlyAtOnce()
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root")
            return; // a read-only bind mount needs root
        using var m = new TempMachine();
        SpawnUniform(m);
        string ro = m.Dir + "-ro";
        Directory.CreateDirectory(ro);
        try
        {
            Sh("mount", "--bind", m.Dir, ro);
            Sh("mount", "-o", "remount,bind,ro", ro);
            foreach (var verb in new[] { "ps", "verify", "run" })
            {
                string[] args = verb == "run" ? [verb, "--for", "1ms", "--machine", ro] : [verb, "--machine", ro];
                var r = CliRunner.Run(args);
                Assert.True(r.Code == (int)ExitCode.Environment, $"{verb}: {r.Code} {r.Err}");
                Assert.Contains("read-only", r.Err);
                Assert.DoesNotContain("in use", r.Err);
            }
        }
        finally
        {
            Sh("umount", ro);
            Directory.Delete(ro);
        }
    }

    private static void Sh(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)}: {err}");
    }

    [Fact]
    public void Verify_NoProcess_IsNotSuccess()
    {
        using var m = new TempMachine();
        int pid = SpawnUniform(m);
        Assert.Equal(0, CliRunner.Run("kill", "-t", pid.ToString(), "--machine", m.Dir).Code);
        var r = CliRunner.Run("verify", "--machine", m.Dir);
        Assert.Equal((int)ExitCode.CheckFailed, r.Code);
        Assert.Contains("nothing to verify", r.Err);
    }

    [Fact]
    public void FailedRestore_LeavesNoMachineDirectory()
    {
        using var m = new TempMachine();
        string images = m.Dir + "-img";
        Directory.CreateDirectory(images);
        try
        {
            var r = CliRunner.Run("restore", "-D", images, "--machine", m.Dir);
            Assert.NotEqual(0, r.Code);
            Assert.False(Directory.Exists(m.Dir), "a failed restore created the machine directory");
        }
        finally
        {
            Directory.Delete(images, true);
        }
    }

    [Fact]
    public void FailedSpawn_LeavesNoMachine_AndAMismatchedProfileIsNamed()
    {
        using var m = new TempMachine();
        string bad = m.Dir + "-bad.json";
        File.WriteAllText(bad, """{ "processes": [ { "name": "x", "mappings": [], "behaviour": { "type": "no-such-behaviour" } } ] }""");
        try
        {
            var failed = CliRunner.Run("spawn", bad, "--arch", "arm64", "--machine", m.Dir);
            Assert.NotEqual(0, failed.Code);
            Assert.False(Directory.Exists(m.Dir), "a failed spawn left a machine behind");

            SpawnUniform(m);
            var ps = CliRunner.Run("ps", "--machine", m.Dir, "--json");
            Assert.Equal("x86_64", JsonDocument.Parse(ps.Out).RootElement.GetProperty("arch").GetString());

            var other = CliRunner.Run("spawn", Sample("uniform.json"), "--arch", "arm64", "--machine", m.Dir);
            Assert.Equal((int)ExitCode.BadInput, other.Code);
            Assert.Contains("is x86_64, not arm64", other.Err);
            var kernel = CliRunner.Run("spawn", Sample("uniform.json"), "--kernel", "2013", "--machine", m.Dir);
            Assert.Equal((int)ExitCode.BadInput, kernel.Code);
            Assert.Contains("not 2013", kernel.Err);
        }
        finally
        {
            File.Delete(bad);
        }
    }

    [Fact]
    public void BadValues_AreNamedInTheToolsWords()
    {
        using var m = new TempMachine();
        int pid = SpawnUniform(m);
        var t = CliRunner.Run("maps", "-t", "abc", "--machine", m.Dir);
        Assert.Equal((int)ExitCode.Usage, t.Code);
        Assert.DoesNotContain("System.", t.Err);
        Assert.Contains("'abc': not a whole number", t.Err);

        string file = m.Dir + "-file";
        File.WriteAllText(file, "x");
        try
        {
            var d = CliRunner.Run("dump", "-t", pid.ToString(), "-D", file, "--machine", m.Dir);
            Assert.Equal((int)ExitCode.Environment, d.Code);
            Assert.DoesNotContain("The file", d.Err);
            Assert.Contains($"{file}: already exists and is not a directory", d.Err);
            Assert.Equal(2, d.ErrLines.Length); // the message and its hint
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public void PreDump_ParentOfAnotherProcess_IsNamedInAWarning()
    {
        using var m = new TempMachine();
        int a = SpawnUniform(m);
        int b = SpawnUniform(m);
        string root = m.Dir + "-img";
        try
        {
            var first = CliRunner.Run("pre-dump", "-t", a.ToString(), "-D", Path.Combine(root, "a"), "--machine", m.Dir);
            Assert.True(first.Code == 0, first.Err);
            Assert.DoesNotContain("warning", first.Err);
            var second = CliRunner.Run("pre-dump", "-t", b.ToString(), "-D", Path.Combine(root, "b"), "--prev-images-dir", "../a", "--machine", m.Dir);
            Assert.True(second.Code == 0, second.Err);
            Assert.Contains("warning", second.Err);
            Assert.Contains($"task {b}: the parent images", second.Err);
            Assert.Contains($"pid {a}", second.Err);
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, true);
        }
    }

    [Fact]
    public void SecondCommand_SaysItWaitsForTheLock()
    {
        using var m = new TempMachine();
        SpawnUniform(m);
        using (new FileStream(Path.Combine(m.Dir, "machine.lock"), FileMode.Open, FileAccess.ReadWrite, FileShare.None))
        {
            var r = CliRunner.Run("ps", "--machine", m.Dir, "--wait", "0.2");
            Assert.Equal((int)ExitCode.Busy, r.Code);
            Assert.Contains("waiting up to 0.2 s for its lock", r.Err);
        }
        Assert.Equal(0, CliRunner.Run("ps", "--machine", m.Dir).Code);
    }

    /// <summary>Notes, for every line written, whether the second pre-dump had started by then.</summary>
    private sealed class WatchingWriter(string secondDumpDir) : StringWriter
    {
        public readonly List<(string Line, bool SecondStarted)> Lines = [];
        private readonly StringBuilder _line = new();

        public override void Write(char value)
        {
            if (value == '\n')
            {
                Lines.Add((_line.ToString(), Directory.Exists(secondDumpDir)));
                _line.Clear();
            }
            else
                _line.Append(value);
        }

        public override void Write(string? value)
        {
            foreach (char c in value ?? "")
                Write(c);
        }

        public override void WriteLine(string? value)
        {
            Write(value);
            Write('\n');
        }
    }

    [Fact]
    public void Migrate_PlainOutput_PrintsEachRowWhenItsIterationEnds()
    {
        using var s = new MigrateScratch();
        string keep = Path.Combine(s.Dir, "keep");
        var o = new WatchingWriter(Path.Combine(keep, "2"));
        int code = CliApp.Run(["migrate", .. s.Args("--policy", "fixed:2", "-D", keep)], o, new StringWriter());
        Assert.Equal(0, code);
        var first = o.Lines.FindIndex(l => System.Text.RegularExpressions.Regex.IsMatch(l.Line, @"^ *1 +pre-dump "));
        Assert.True(first >= 0, string.Join('\n', o.Lines.Select(l => l.Line)));
        Assert.False(o.Lines[first].SecondStarted, "row 1 was printed after the second pre-dump began");
        Assert.Matches(@"^ *# +kind +scanned", o.Lines[first - 1].Line);
        Assert.StartsWith("migrate ", o.Lines[first - 2].Line);
        Assert.Contains(o.Lines, l => l.Line.StartsWith("pre-dumps ") && l.Line.Contains("2 (stop: 2 pre-dumps done)"));
    }
}

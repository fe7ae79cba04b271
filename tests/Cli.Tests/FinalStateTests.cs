using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// CRIU's final states and the options around them: --leave-stopped (dump and restore, simulated
/// and real host), restore -d, --pre-dump-mode, --timeout, and how a lock wait is shown.
/// </summary>
public sealed class FinalStateTests
{
    private static string Spawn(TempMachine m, MigrateScratch s)
    {
        var spawn = CliRunner.Run("spawn", s.Workload, "--machine", m.Dir, "--json");
        Assert.True(spawn.Code == 0, spawn.Err);
        return JsonDocument.Parse(spawn.Out).RootElement.GetProperty("pids")[0].GetInt32().ToString(CultureInfo.InvariantCulture);
    }

    private static string State(TempMachine m, string pid)
    {
        var ps = CliRunner.Run("ps", "--machine", m.Dir, "--json");
        Assert.True(ps.Code == 0, ps.Err);
        foreach (var p in JsonDocument.Parse(ps.Out).RootElement.GetProperty("processes").EnumerateArray())
            if (p.GetProperty("pid").GetInt32().ToString(CultureInfo.InvariantCulture) == pid)
                return p.GetProperty("state").GetString()!;
        return "gone";
    }

    /// <summary>Pages a pre-dump chained to <paramref name="prev"/> writes: the pages the tree wrote since.</summary>
    private static long PagesWrittenSince(TempMachine m, string pid, string dir, string? prev)
    {
        var args = new List<string> { "pre-dump", "-t", pid, "-D", dir, "--machine", m.Dir, "--json" };
        if (prev is not null)
            args.AddRange(["--prev-images-dir", prev]);
        var r = CliRunner.Run([.. args]);
        Assert.True(r.Code == 0, r.Err);
        return JsonDocument.Parse(r.Out).RootElement.GetProperty("stats").GetProperty("pages_written").GetInt64();
    }

    [Fact]
    public void Restore_LeaveStopped_TheTreeRunsOnlyAfterSigcont()
    {
        using var s = new MigrateScratch();
        using var src = new TempMachine();
        using var dst = new TempMachine();
        string pid = Spawn(src, s);
        string d = Path.Combine(s.Dir, "d");
        Assert.Equal(0, CliRunner.Run("dump", "-t", pid, "-D", d, "--machine", src.Dir).Code);
        var restore = CliRunner.Run("restore", "-D", d, "--machine", dst.Dir, "--leave-stopped", "--json");
        Assert.True(restore.Code == 0, restore.Err);
        Assert.Equal("stopped", JsonDocument.Parse(restore.Out).RootElement.GetProperty("state").GetString());
        Assert.Equal("stopped", State(dst, pid));

        // Stopped: virtual time passes and the program writes nothing; a pre-dump after the run
        // writes what one right after another writes (the pages dumped every time, [vdso]).
        PagesWrittenSince(dst, pid, Path.Combine(s.Dir, "p1"), null);
        long idle = PagesWrittenSince(dst, pid, Path.Combine(s.Dir, "p2"), "../p1");
        Assert.Equal(0, CliRunner.Run("run", "--for", "50ms", "--machine", dst.Dir).Code);
        Assert.Equal(idle, PagesWrittenSince(dst, pid, Path.Combine(s.Dir, "p3"), "../p2"));
        Assert.Equal("stopped", State(dst, pid));

        // SIGCONT: it runs again, from where it was.
        var cont = CliRunner.Run("kill", "-s", "CONT", "-t", pid, "--machine", dst.Dir);
        Assert.True(cont.Code == 0, cont.Err);
        Assert.Equal("running", State(dst, pid));
        Assert.Equal(0, CliRunner.Run("run", "--for", "50ms", "--machine", dst.Dir).Code);
        Assert.True(PagesWrittenSince(dst, pid, Path.Combine(s.Dir, "p4"), "../p3") > idle + 100);
        Assert.Equal(0, CliRunner.Run("verify", "--machine", dst.Dir).Code);
    }

    [Fact]
    public void Restore_WithoutLeaveStopped_Resumes_AndDetachedIsAccepted()
    {
        using var s = new MigrateScratch();
        using var src = new TempMachine();
        using var dst = new TempMachine();
        string pid = Spawn(src, s);
        string d = Path.Combine(s.Dir, "d");
        Assert.Equal(0, CliRunner.Run("dump", "-t", pid, "-D", d, "--machine", src.Dir).Code);
        var restore = CliRunner.Run("restore", "-d", "-D", d, "--machine", dst.Dir, "--json");
        Assert.True(restore.Code == 0, restore.Err);
        var json = JsonDocument.Parse(restore.Out).RootElement;
        Assert.Equal("running", json.GetProperty("state").GetString());
        Assert.Equal("running", State(dst, pid));
    }

    [Fact]
    public void Dump_LeaveStopped_KeepsTheTreeStopped_UntilSigcont()
    {
        using var s = new MigrateScratch();
        using var m = new TempMachine();
        string pid = Spawn(m, s);
        var dump = CliRunner.Run("dump", "-t", pid, "-D", Path.Combine(s.Dir, "d"), "--leave-stopped", "--machine", m.Dir);
        Assert.True(dump.Code == 0, dump.Err);
        Assert.Equal("stopped", State(m, pid));
        PagesWrittenSince(m, pid, Path.Combine(s.Dir, "p1"), null);
        long idle = PagesWrittenSince(m, pid, Path.Combine(s.Dir, "p2"), "../p1");
        Assert.Equal(0, CliRunner.Run("run", "--for", "50ms", "--machine", m.Dir).Code);
        Assert.Equal(idle, PagesWrittenSince(m, pid, Path.Combine(s.Dir, "p3"), "../p2"));
        Assert.Equal(0, CliRunner.Run("kill", "--signal", "SIGCONT", "-t", pid, "--machine", m.Dir).Code);
        Assert.Equal("running", State(m, pid));
        Assert.Equal(0, CliRunner.Run("verify", "--machine", m.Dir).Code);
        // SIGSTOP from kill stops it again; an unknown signal is a usage error.
        Assert.Equal(0, CliRunner.Run("kill", "-s", "STOP", "-t", pid, "--machine", m.Dir).Code);
        Assert.Equal("stopped", State(m, pid));
        var bad = CliRunner.Run("kill", "-s", "HUP", "-t", pid, "--machine", m.Dir);
        Assert.Equal((int)ExitCode.Usage, bad.Code);
        Assert.Equal("stopped", State(m, pid));
    }

    [Fact]
    public void LockWait_OnATerminal_UpdatesInPlace_AndPipedStaysOneLine()
    {
        using var s = new MigrateScratch();
        using var m = new TempMachine();
        Spawn(m, s);
        string dll = Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        using (new FileStream(Path.Combine(m.Dir, "machine.lock"), FileMode.Open, FileAccess.ReadWrite, FileShare.None))
        {
            // Piped: the wait is announced once, one line, no control characters.
            var piped = CliRunner.RunProcess(s.Dir, "ps", "--machine", m.Dir, "--wait", "1.5");
            Assert.Equal((int)ExitCode.Busy, piped.Code);
            Assert.Single(piped.ErrLines, l => l.Contains("waiting", StringComparison.Ordinal));
            Assert.DoesNotContain('\r', piped.Err);
            Assert.DoesNotContain('\u001b', piped.Err);

            // A pseudo-terminal (script(1)): the line is redrawn in place with the seconds waited.
            Assert.True(File.Exists("/usr/bin/script"), "script(1) is missing (Debian's bsdutils, an essential package)");
            var psi = new ProcessStartInfo("/usr/bin/script", ["-qec", $"dotnet {dll} ps --machine {m.Dir} --wait 2.5", "/dev/null"])
            { RedirectStandardOutput = true, RedirectStandardInput = true, WorkingDirectory = s.Dir };
            psi.Environment.Remove("CRIU_SHARP_MACHINE");
            using var p = Process.Start(psi)!;
            // Everything the command writes, both streams, comes through script's one pty.
            string tty = p.StandardOutput.ReadToEnd();
            Assert.True(p.WaitForExit(120_000));
            Assert.Equal((int)ExitCode.Busy, p.ExitCode);
            Assert.Contains("\rcriu-sharp: machine", tty);
            Assert.Contains("waiting for its lock: 0 s of up to 2.5 s", tty);
            Assert.Contains("\u001b[K", tty);
            // The live line is ended before the error, which starts a line of its own.
            Assert.Matches(@"\u001b\[K\r*\ncriu-sharp: machine \S+ is in use by another command \(waited", tty);
        }
    }

    [Fact]
    public void PreDumpMode_ReadWritesWhatSpliceWrites_FrozenShorter()
    {
        using var s = new MigrateScratch();
        using var m1 = new TempMachine();
        using var m2 = new TempMachine();
        string pid = Spawn(m1, s);
        Assert.Equal(pid, Spawn(m2, s));
        JsonElement PreDump(TempMachine m, string dir, string mode)
        {
            var r = CliRunner.Run("pre-dump", "-t", pid, "-D", Path.Combine(s.Dir, dir), "--pre-dump-mode", mode, "--machine", m.Dir, "--json");
            Assert.True(r.Code == 0, r.Err);
            return JsonDocument.Parse(r.Out).RootElement.GetProperty("stats");
        }
        var splice = PreDump(m1, "splice", "splice");
        var read = PreDump(m2, "read", "read");
        Assert.Equal(splice.GetProperty("pages_written").GetInt64(), read.GetProperty("pages_written").GetInt64());
        Assert.True(read.GetProperty("frozen_time_ns").GetInt64() < splice.GetProperty("frozen_time_ns").GetInt64(), $"{read} vs {splice}");
        Assert.Equal(File.ReadAllBytes(Path.Combine(s.Dir, "splice", $"pagemap-{pid}.img")), File.ReadAllBytes(Path.Combine(s.Dir, "read", $"pagemap-{pid}.img")));

        var bad = CliRunner.Run("pre-dump", "-t", pid, "-D", Path.Combine(s.Dir, "x"), "--pre-dump-mode", "copy", "--machine", m1.Dir);
        Assert.Equal((int)ExitCode.Usage, bad.Code);
    }

    [Fact]
    public void Timeout_ADumpThatFreezesTooLong_Exits11_TreeRunning_ImagesIncomplete()
    {
        using var s = new MigrateScratch();
        using var m = new TempMachine();
        string pid = Spawn(m, s);
        string d = Path.Combine(s.Dir, "d");
        var r = CliRunner.Run("dump", "-t", pid, "-D", d, "--freeze-cost", "2s", "--timeout", "1", "--machine", m.Dir);
        Assert.Equal((int)ExitCode.Timeout, r.Code);
        Assert.StartsWith("criu-sharp: timeout reached", r.ErrLines[0]);
        Assert.Equal(2, r.ErrLines.Length); // the message and the hint
        Assert.Equal("running", State(m, pid));
        Assert.True(File.Exists(Path.Combine(d, ".criu-sharp-incomplete")));
        var refused = CliRunner.Run("restore", "-D", d, "--machine", Path.Combine(s.Dir, "dest"));
        Assert.NotEqual(0, refused.Code);

        // Within the limit (or with none) the same dump succeeds.
        Assert.Equal(0, CliRunner.Run("dump", "-t", pid, "-D", d, "--freeze-cost", "2s", "--timeout", "0", "-R", "--machine", m.Dir).Code);
        Assert.Equal((int)ExitCode.Usage, CliRunner.Run("dump", "-t", pid, "-D", d, "--timeout", "-1", "--machine", m.Dir).Code);
    }

    [Fact]
    public void Dump_LeaveRunningAndLeaveStopped_Together_IsAUsageError()
    {
        using var s = new MigrateScratch();
        using var m = new TempMachine();
        string pid = Spawn(m, s);
        var r = CliRunner.Run("dump", "-t", pid, "-D", Path.Combine(s.Dir, "d"), "-R", "-s", "--machine", m.Dir);
        Assert.Equal((int)ExitCode.Usage, r.Code);
        Assert.Contains("exclude each other", r.Err);
        Assert.False(Directory.Exists(Path.Combine(s.Dir, "d")));
        Assert.Equal("running", State(m, pid));
    }
}

/// <summary>--leave-stopped on the real host: a `sleep` this test starts is left stopped, then continued and killed by the test.</summary>
public sealed class RealHostLeaveStoppedTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("criu-sharp-leave-stopped-").FullName;
    private readonly SleepChild _child = new();

    public void Dispose()
    {
        _child.Dispose();
        Directory.Delete(_dir, true);
    }

    private char State()
    {
        var s = File.ReadAllText($"/proc/{_child.Pid}/stat");
        return s[s.LastIndexOf(')') + 2];
    }

    /// <summary>Polls (bounded) until the kernel has moved the task out of <paramref name="from"/>; the assert is on the state, not on time.</summary>
    private char StateOtherThan(char from)
    {
        char st = State();
        for (int i = 0; i < 1000 && st == from; i++)
        {
            Thread.Sleep(10);
            st = State();
        }
        return st;
    }

    [Fact]
    public void Dump_LeaveStopped_LeavesTheProcessStopped_AndSigcontResumesIt()
    {
        string pid = _child.Pid.ToString(CultureInfo.InvariantCulture);
        var r = CliRunner.Run("dump", "-t", pid, "--machine", "/proc", "-D", Path.Combine(_dir, "d"), "--leave-stopped");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("left the tree", r.Err);
        Assert.Equal('T', StateOtherThan('S'));
        // Not traced, not frozen any more: only a group stop, which SIGCONT ends.
        Assert.Contains("TracerPid:\t0", File.ReadAllText($"/proc/{_child.Pid}/status"));
        using (var kill = Process.Start("/bin/kill", ["-CONT", pid]))
            kill.WaitForExit();
        Assert.Equal('S', StateOtherThan('T'));
    }

    [Fact]
    public void PreDump_ReadMode_WorksOnTheHost_AndLeavesTheProcessRunning()
    {
        string pid = _child.Pid.ToString(CultureInfo.InvariantCulture);
        var r = CliRunner.Run("pre-dump", "-t", pid, "--machine", "/proc", "-D", Path.Combine(_dir, "p"), "--pre-dump-mode", "read", "--json");
        Assert.True(r.Code == 0, r.Err);
        Assert.True(JsonDocument.Parse(r.Out).RootElement.GetProperty("stats").GetProperty("pages_written").GetInt64() > 0);
        Assert.Equal(2u, CriuSharp.ImageFormat.ImageSet.Open(Path.Combine(_dir, "p")).ReadInventory().PreDumpMode);
        Assert.Equal('S', StateOtherThan('T'));
    }
}

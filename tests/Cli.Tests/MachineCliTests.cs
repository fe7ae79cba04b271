using System.Text.Json;
using CriuSharp.SimKernel.Machine;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>The machine verbs end to end on a sample workload.</summary>
public class MachineCliTests
{
    private static string Sample(string name) => Path.Combine(CliRunner.RepoRoot(), "samples", name);

    [Fact]
    public void SpawnRunInspectClearVerifyKill()
    {
        using var m = new TempMachine();
        var spawn = CliRunner.Run("spawn", Sample("uniform.json"), "--machine", m.Dir, "--json");
        Assert.True(spawn.Code == 0, spawn.Err);
        int pid = JsonDocument.Parse(spawn.Out).RootElement.GetProperty("pids")[0].GetInt32();

        var run = CliRunner.Run("run", "--for", "50ms", "--machine", m.Dir, "--json");
        Assert.True(run.Code == 0, run.Err);
        Assert.Equal(50_000_000UL, JsonDocument.Parse(run.Out).RootElement.GetProperty("uptime_ns").GetUInt64());

        var ps = CliRunner.Run("ps", "--machine", m.Dir, "--json");
        Assert.Contains(JsonDocument.Parse(ps.Out).RootElement.GetProperty("processes").EnumerateArray(), p => p.GetProperty("pid").GetInt32() == pid);

        Assert.Contains("[stack]", CliRunner.Run("maps", "-t", pid.ToString(), "--machine", m.Dir).Out);
        Assert.Contains("VmFlags:", CliRunner.Run("smaps", "-t", pid.ToString(), "--machine", m.Dir).Out);

        var dirty = CliRunner.Run("pagemap", "-t", pid.ToString(), "--soft-dirty-only", "--machine", m.Dir, "--json");
        Assert.True(dirty.Code == 0, dirty.Err);
        Assert.NotEmpty(JsonDocument.Parse(dirty.Out).RootElement.GetProperty("entries").EnumerateArray());

        Assert.Equal(0, CliRunner.Run("clear-refs", "-t", pid.ToString(), "4", "--machine", m.Dir).Code);
        var clean = CliRunner.Run("pagemap", "-t", pid.ToString(), "--soft-dirty-only", "--machine", m.Dir, "--json");
        Assert.Empty(JsonDocument.Parse(clean.Out).RootElement.GetProperty("entries").EnumerateArray());

        CliRunner.Run("run", "--for", "20ms", "--machine", m.Dir);
        var again = CliRunner.Run("pagemap", "-t", pid.ToString(), "--soft-dirty-only", "--machine", m.Dir, "--json");
        Assert.NotEmpty(JsonDocument.Parse(again.Out).RootElement.GetProperty("entries").EnumerateArray());

        var verify = CliRunner.Run("verify", "-t", pid.ToString(), "--machine", m.Dir);
        Assert.True(verify.Code == 0, verify.Out + verify.Err);

        Assert.Equal(0, CliRunner.Run("kill", "-t", pid.ToString(), "--machine", m.Dir).Code);
        var gone = CliRunner.Run("maps", "-t", pid.ToString(), "--machine", m.Dir);
        Assert.Equal((int)ExitCode.BadInput, gone.Code);
        Assert.Contains($"no process {pid}", gone.Err);
    }

    [Fact]
    public void ThreadedWorkload_AcrossCommands_PreDumpDumpRestoreVerify()
    {
        using var src = new TempMachine();
        using var dest = new TempMachine();
        string img = src.Dir + "-img";
        try
        {
            var spawn = CliRunner.Run("spawn", Sample("threads.json"), "--machine", src.Dir, "--json");
            Assert.True(spawn.Code == 0, spawn.Err);
            int pid = JsonDocument.Parse(spawn.Out).RootElement.GetProperty("pids")[0].GetInt32();
            string t = pid.ToString(System.Globalization.CultureInfo.InvariantCulture);
            // Every command loads the machine the previous one saved: the threads must survive each.
            Assert.Equal(0, CliRunner.Run("run", "--for", "5ms", "--machine", src.Dir).Code);
            var ps = JsonDocument.Parse(CliRunner.Run("ps", "--machine", src.Dir, "--json").Out).RootElement.GetProperty("processes");
            Assert.Equal(4, ps.EnumerateArray().Count(p => p.GetProperty("tgid").GetInt32() == pid));
            var pre = CliRunner.Run("pre-dump", "-t", t, "-D", Path.Combine(img, "1"), "--machine", src.Dir);
            Assert.True(pre.Code == 0, pre.Err);
            Assert.Equal(0, CliRunner.Run("run", "--for", "5ms", "--machine", src.Dir).Code);
            var dump = CliRunner.Run("dump", "-t", t, "-D", Path.Combine(img, "2"), "--prev-images-dir", "../1", "--machine", src.Dir);
            Assert.True(dump.Code == 0, dump.Err);
            var x = CliRunner.Run("x", Path.Combine(img, "2"), "ps");
            Assert.Contains("threads " + string.Join(' ', Enumerable.Range(1, 3).Select(i => pid + i)), x.Out);
            var restore = CliRunner.Run("restore", "-D", Path.Combine(img, "2"), "--machine", dest.Dir);
            Assert.True(restore.Code == 0, restore.Err);
            var verify = CliRunner.Run("verify", "--machine", dest.Dir);
            Assert.True(verify.Code == 0, verify.Out + verify.Err);
            Assert.Equal(4, verify.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Count(l => l.Contains("threads: ok", StringComparison.Ordinal)));
            Assert.Equal(0, CliRunner.Run("run", "--for", "5ms", "--machine", dest.Dir).Code);
            Assert.Equal(0, CliRunner.Run("verify", "--machine", dest.Dir).Code);
        }
        finally
        {
            if (Directory.Exists(img))
                Directory.Delete(img, true);
        }
    }

    [Fact]
    public void HugetlbWorkload_NeedsAPool_AndMovesAcrossCommands()
    {
        using var src = new TempMachine();
        using var dest = new TempMachine();
        string img = src.Dir + "-img";
        try
        {
            // A new machine boots with no hugetlb pool: the sample's 32 MiB cannot be mapped.
            var none = CliRunner.Run("spawn", Sample("hugetlb.json"), "--machine", src.Dir);
            Assert.NotEqual(0, none.Code);
            Assert.Contains("hugetlb pool", none.Err);
            Assert.False(Directory.Exists(src.Dir), "a failed spawn leaves no machine behind");

            var spawn = CliRunner.Run("spawn", Sample("hugetlb.json"), "--hugepages", "20", "--machine", src.Dir, "--json");
            Assert.True(spawn.Code == 0, spawn.Err);
            int pid = JsonDocument.Parse(spawn.Out).RootElement.GetProperty("pids")[0].GetInt32();
            string t = pid.ToString(System.Globalization.CultureInfo.InvariantCulture);
            Assert.Equal(0, CliRunner.Run("run", "--for", "5ms", "--machine", src.Dir).Code);
            var dump = CliRunner.Run("dump", "-t", t, "-D", img, "--machine", src.Dir);
            Assert.True(dump.Code == 0, dump.Err);

            // The destination needs a pool of its own; without one restore says so.
            var noPool = CliRunner.Run("restore", "-D", img, "--machine", dest.Dir);
            Assert.NotEqual(0, noPool.Code);
            Assert.Contains("hugetlb pool", noPool.Err);
            var restore = CliRunner.Run("restore", "-D", img, "--machine", dest.Dir, "--hugepages", "16");
            Assert.True(restore.Code == 0, restore.Err);
            var verify = CliRunner.Run("verify", "-t", t, "--machine", dest.Dir);
            Assert.True(verify.Code == 0, verify.Out + verify.Err);
            // The restored data is still hugetlb memory: smaps shows 2 MiB kernel pages.
            Assert.Matches(@"KernelPageSize:\s+2048 kB", CliRunner.Run("smaps", "-t", t, "--machine", dest.Dir).Out);
        }
        finally
        {
            if (Directory.Exists(img))
                Directory.Delete(img, true);
        }
    }

    [Fact]
    public void BadInputs_GiveOneLineAndTheDocumentedCode()
    {
        using var m = new TempMachine();
        var missing = CliRunner.Run("spawn", "/nonexistent/w.json", "--machine", m.Dir);
        Assert.Equal((int)ExitCode.BadInput, missing.Code);
        Assert.Contains("no such file", missing.Err);

        string bad = Path.Combine(m.Dir + "-w.json");
        File.WriteAllText(bad, "{ \"processes\": [ { \"name\": \"x\", ");
        var malformed = CliRunner.Run("spawn", bad, "--machine", m.Dir);
        File.Delete(bad);
        Assert.Equal((int)ExitCode.BadInput, malformed.Code);
        Assert.Contains(bad, malformed.Err);

        Assert.Equal(0, CliRunner.Run("spawn", Sample("idle.json"), "--machine", m.Dir).Code);
        var clear = CliRunner.Run("clear-refs", "-t", "999999", "4", "--machine", m.Dir);
        Assert.Equal((int)ExitCode.BadInput, clear.Code);
        int pid = int.Parse(CliRunner.Run("ps", "--machine", m.Dir, "--json").Out is var j
            ? JsonDocument.Parse(j).RootElement.GetProperty("processes")[0].GetProperty("pid").GetInt32().ToString() : "0");
        var einval = CliRunner.Run("clear-refs", "-t", pid.ToString(), "9", "--machine", m.Dir);
        Assert.Equal((int)ExitCode.KernelError, einval.Code);
        Assert.Contains("EINVAL", einval.Err);
    }

    [Fact]
    public void SecondCommandOnABusyMachine_FailsWithBusy()
    {
        using var m = new TempMachine();
        Assert.Equal(0, CliRunner.Run("spawn", Sample("idle.json"), "--machine", m.Dir).Code);
        using var held = SimMachine.Open(m.Dir, TimeSpan.FromSeconds(5));
        var r = CliRunner.Run("ps", "--machine", m.Dir, "--wait", "0.2");
        Assert.Equal((int)ExitCode.Busy, r.Code);
        Assert.Contains("in use", r.Err);
    }

    [Fact]
    public void TheBuiltExecutable_RunsTheSeedSelftest()
    {
        using var m = new TempMachine();
        Directory.CreateDirectory(m.Dir);
        var r = CliRunner.RunProcess(m.Dir, "selftest", "soft-dirty-2013");
        Assert.True(r.Code == 0, r.Err);
        Assert.Contains("0 failed", r.Out);
        var bad = CliRunner.RunProcess(m.Dir, "selftest", "no-such-test");
        Assert.Equal((int)ExitCode.Usage, bad.Code);
    }
}

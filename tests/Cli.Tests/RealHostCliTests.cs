using System.Diagnostics;
using System.Globalization;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// --machine /proc on the command line: the bad cases each give one line and a documented exit
/// code. The process used is a `sleep` this test starts (backgrounded by a shell, so it is not
/// the test's child) and kills.
/// </summary>
public sealed class RealHostCliTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("criu-sharp-realhost-cli-").FullName;
    private readonly SleepChild _child = new();

    public void Dispose()
    {
        _child.Dispose();
        Directory.Delete(_dir, true);
    }

    private static int FreePid()
    {
        int max = int.Parse(File.ReadAllText("/proc/sys/kernel/pid_max").Trim(), CultureInfo.InvariantCulture);
        for (int p = max - 1; p > 1; p--)
            if (!Directory.Exists($"/proc/{p}"))
                return p;
        throw new InvalidOperationException("no free pid");
    }

    [Fact]
    public void DumpOfAPidThatDoesNotExist_Exits9()
    {
        var r = CliRunner.Run("dump", "-t", FreePid().ToString(CultureInfo.InvariantCulture), "--machine", "/proc", "-D", Path.Combine(_dir, "x"));
        Assert.Equal(9, r.Code);
        Assert.Single(r.ErrLines);
        Assert.Contains("no process", r.Err);
    }

    [Fact]
    public void TrackerTheHostLacks_Exits8()
    {
        // uffd-wp needs a userfaultfd inside the task, which an observer never has.
        var r = CliRunner.Run("pre-dump", "-t", _child.Pid.ToString(CultureInfo.InvariantCulture), "--machine", "/proc", "-D", Path.Combine(_dir, "t"), "--tracker", "uffd-wp");
        Assert.Equal(8, r.Code);
        Assert.Contains("uffd-wp is not available", r.Err);
        Assert.Contains(RealState(), "SR");
    }

    [Theory]
    [InlineData("run", "--for", "1ms")]
    [InlineData("spawn", "SAMPLE")]
    [InlineData("restore", "-D", ".")]
    public void SimulatorOnlyVerbs_OnTheRealHost_Exit8(params string[] args)
    {
        args = args.Select(a => a == "SAMPLE" ? Path.Combine(CliRunner.RepoRoot(), "samples", "hotcold.json") : a).ToArray();
        var r = CliRunner.Run([.. args, "--machine", "/proc"]);
        Assert.Equal(8, r.Code);
        Assert.Contains("needs a simulated machine", r.Err);
    }

    [Fact]
    public void PreDumpThenDump_LeaveTheProcessRunning()
    {
        var r1 = CliRunner.Run("pre-dump", "-t", _child.Pid.ToString(CultureInfo.InvariantCulture), "--machine", "/proc", "-D", Path.Combine(_dir, "1"), "--json");
        Assert.Equal(0, r1.Code);
        Assert.Contains("\"tracker\"", r1.Out);
        var r2 = CliRunner.Run("dump", "-t", _child.Pid.ToString(CultureInfo.InvariantCulture), "--machine", "/proc", "-D", Path.Combine(_dir, "2"), "--prev-images-dir", "../1");
        Assert.Equal(0, r2.Code);
        Assert.Contains("froze the tree with", r2.Err);
        Assert.Contains(RealState(), "SR");
    }

    [Fact]
    public void AnotherUsersProcess_Exits10()
    {
        // criu-sharp run as nobody against a root-owned process: ptrace access is refused.
        if (Environment.UserName != "root" || !File.Exists("/usr/bin/setpriv"))
            return;
        // nobody must reach the program: a checkout under a private directory (mktemp -d is 0700)
        // is not searchable by other users, so it runs from a world-readable link copy in /tmp.
        string app = Path.Combine("/tmp", $"criu-sharp-nobody-app-{Guid.NewGuid():N}");
        try
        {
            LinkCopy(AppContext.BaseDirectory, app);
            var psi = new ProcessStartInfo("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "dotnet", Path.Combine(app, "criu-sharp.dll"),
                "dump", "-t", _child.Pid.ToString(CultureInfo.InvariantCulture), "--machine", "/proc", "-D", Path.Combine(Path.GetTempPath(), $"criu-sharp-nobody-{Guid.NewGuid():N}")])
            { RedirectStandardError = true, RedirectStandardOutput = true };
            psi.Environment["HOME"] = "/tmp";
            psi.Environment["DOTNET_CLI_HOME"] = "/tmp";
            using var p = Process.Start(psi)!;
            string err = p.StandardError.ReadToEnd();
            p.StandardOutput.ReadToEnd();
            Assert.True(p.WaitForExit(60_000));
            Assert.True(p.ExitCode == 10, $"exit {p.ExitCode}: {err}");
            Assert.Single(err.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("criu-sharp: ", StringComparison.Ordinal) && !l.Contains("hint", StringComparison.OrdinalIgnoreCase));
            Assert.Matches("not permitted|ermission denied", err);
            Assert.Contains(RealState(), "SR");
        }
        finally
        {
            if (Directory.Exists(app))
                Directory.Delete(app, true);
        }
    }

    /// <summary>cp -al (hard links; a full copy where the two directories are on different file systems), the new directory 0755.</summary>
    private static void LinkCopy(string from, string to)
    {
        foreach (var args in new[] { new[] { "-al", from, to }, ["-a", from, to] })
        {
            using var cp = Process.Start(new ProcessStartInfo("cp", args) { RedirectStandardError = true })!;
            cp.StandardError.ReadToEnd();
            Assert.True(cp.WaitForExit(60_000));
            if (cp.ExitCode == 0)
            {
                using var chmod = Process.Start("chmod", ["755", to])!;
                Assert.True(chmod.WaitForExit(60_000) && chmod.ExitCode == 0, $"chmod 755 {to} failed");
                return;
            }
            if (Directory.Exists(to))
                Directory.Delete(to, true);
        }
        Assert.Fail($"could not copy {from} to {to}");
    }

    private char RealState()
    {
        var s = File.ReadAllText($"/proc/{_child.Pid}/stat");
        return s[s.LastIndexOf(')') + 2];
    }
}

using System.CommandLine;
using System.Diagnostics;
using CriuSharp.SimKernel.Machine;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>Contention on a machine directory, and the host refusing resources.</summary>
public class HardeningTests
{
    private static string NewRoot()
    {
        string d = Path.Combine("/dev/shm", "criu-sharp-hard-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }

    private static string Machine(string root, string size = "512KiB")
    {
        string wl = Path.Combine(root, "wl.json");
        File.WriteAllText(wl, FuzzSupport.SmallWorkload(3, size));
        string m = Path.Combine(root, "m");
        var r = CliRunner.Run("spawn", wl, "-m", m, "--memory", "64MiB");
        Assert.True(r.Code == 0, r.Err);
        return m;
    }

    private static void AssertOneLine(CliRunner.Result r)
    {
        Assert.DoesNotContain("   at ", r.Err);
        // The notice that a command waits for the machine's lock precedes the error.
        var lines = r.ErrLines.Where(l => !l.StartsWith("criu-sharp: crash points", StringComparison.Ordinal) && !l.Contains("for its lock (--wait)", StringComparison.Ordinal)).ToArray();
        Assert.InRange(lines.Length, 1, 2); // the error, and a hint where one helps
        Assert.StartsWith("criu-sharp: ", lines[0]);
    }

    [Fact]
    public void ConcurrentCommands_SerialiseAndNeverCorruptTheState()
    {
        string root = NewRoot();
        try
        {
            string m = Machine(root);
            var cmds = new[]
            {
                new[] { "run", "--for", "5ms", "-m", m, "--wait", "60" },
                ["run", "--for", "5ms", "-m", m, "--wait", "60"],
                ["pre-dump", "-t", "1000", "-D", Path.Combine(root, "p1"), "-m", m, "--wait", "60"],
                ["run", "--steps", "100", "-m", m, "--wait", "60"],
                ["ps", "-m", m, "--wait", "60"],
            };
            var results = cmds.AsParallel().WithDegreeOfParallelism(cmds.Length).Select(a => CliRunner.RunProcess(root, a)).ToList();
            foreach (var r in results)
                Assert.True(r.Code == 0, r.Err);
            Assert.Equal(0, CliRunner.Run("verify", "-m", m).Code);

            // Held by another command past --wait: exit 6, one line and a hint, the state untouched.
            byte[] before = File.ReadAllBytes(Path.Combine(m, SimMachine.StateFileName));
            using (SimMachine.Open(m, TimeSpan.Zero))
            {
                var busy = CliRunner.RunProcess(root, "run", "--for", "5ms", "-m", m, "--wait", "0.3");
                Assert.Equal((int)ExitCode.Busy, busy.Code);
                AssertOneLine(busy);
                Assert.Contains("in use", busy.ErrLines[0]);
                Assert.Contains("--wait", busy.Err);
            }
            Assert.Equal(before, File.ReadAllBytes(Path.Combine(m, SimMachine.StateFileName)));
            Assert.Equal(0, CliRunner.Run("verify", "-m", m).Code);
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    [Fact]
    public void WorkloadLargerThanTheMachine_IsRefusedAndNothingSpawns()
    {
        string root = NewRoot();
        try
        {
            string wl = Path.Combine(root, "big.json");
            File.WriteAllText(wl, FuzzSupport.SmallWorkload(1, "256MiB"));
            var r = CliRunner.Run("spawn", wl, "-m", Path.Combine(root, "m"), "--memory", "64MiB");
            Assert.Equal((int)ExitCode.BadInput, r.Code);
            AssertOneLine(r);
            Assert.Contains("big.json", r.ErrLines[0]);
            Assert.Contains("size", r.ErrLines[0]);
            if (SimMachine.Exists(Path.Combine(root, "m")))
                Assert.DoesNotContain("fz", CliRunner.Run("ps", "-m", Path.Combine(root, "m")).Out);
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    /// <summary>A tmpfs of 1 MiB for the images: full, then read-only.</summary>
    [Fact]
    public void FullAndReadOnlyFilesystems_ExitSevenAndLeaveNothingThatLooksComplete()
    {
        string root = NewRoot();
        string mnt = Path.Combine(Path.GetTempPath(), "criu-sharp-tmpfs-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(mnt);
        try
        {
            if (!Sh($"mount -t tmpfs -o size=1m tmpfs {mnt}"))
            {
                Assert.Fail("skipped in effect: cannot mount a tmpfs here (not root?); this test needs mount(8)");
                return;
            }
            string m = Machine(root, "3MiB");
            Assert.Equal(0, CliRunner.Run("run", "--for", "100ms", "-m", m).Code);
            byte[] state = File.ReadAllBytes(Path.Combine(m, SimMachine.StateFileName));

            string full = Path.Combine(mnt, "d");
            var r = CliRunner.Run("dump", "-t", "1000", "-D", full, "--compress", "none", "-m", m);
            Assert.Equal((int)ExitCode.Environment, r.Code);
            AssertOneLine(r);
            Assert.Contains("no space left", r.ErrLines[0], StringComparison.OrdinalIgnoreCase);
            Assert.True(!Directory.Exists(full) || File.Exists(Path.Combine(full, ImageFormat.ImageNames.IncompleteMarker)), "a failed dump looks complete");
            Assert.Equal(state, File.ReadAllBytes(Path.Combine(m, SimMachine.StateFileName)));
            Assert.Contains("running", CliRunner.Run("ps", "-m", m).Out);
            var refused = CliRunner.Run("restore", "-D", full, "-m", Path.Combine(root, "dest"));
            Assert.Equal((int)ExitCode.BadImage, refused.Code);
            Assert.Contains("incomplete", refused.Err);

            Assert.True(Sh($"mount -o remount,ro {mnt}"));
            var ro = CliRunner.Run("pre-dump", "-t", "1000", "-D", Path.Combine(mnt, "e"), "-m", m);
            Assert.Equal((int)ExitCode.Environment, ro.Code);
            AssertOneLine(ro);
            Assert.Contains("read-only", ro.ErrLines[0], StringComparison.OrdinalIgnoreCase);
            Assert.Equal(state, File.ReadAllBytes(Path.Combine(m, SimMachine.StateFileName)));
            Assert.Equal(0, CliRunner.Run("verify", "-m", m).Code);
        }
        finally
        {
            Sh($"umount {mnt}");
            Directory.Delete(mnt, true);
            Directory.Delete(root, true);
        }
    }

    /// <summary>Runs the built CLI with a file named liblz4.so.1 that is not a library first on the loader's path.</summary>
    private static CliRunner.Result RunWithBrokenLiblz4(string root, params string[] args)
    {
        string stub = Path.Combine(root, "stub");
        Directory.CreateDirectory(stub);
        File.WriteAllText(Path.Combine(stub, "liblz4.so.1"), "not a library\n");
        string dll = Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = root };
        psi.ArgumentList.Add(dll);
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        psi.Environment["LD_LIBRARY_PATH"] = stub;
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return new CliRunner.Result(p.ExitCode, output, err.Result);
    }

    [Fact]
    public void MissingLiblz4_NativeAskedFor_ExitsSevenWithAHint()
    {
        string root = NewRoot();
        try
        {
            string m = Machine(root);
            var r = RunWithBrokenLiblz4(root, "dump", "-t", "1000", "-D", Path.Combine(root, "d"), "--compress", "lz4", "--lz4", "native", "-m", m);
            Assert.Equal((int)ExitCode.Environment, r.Code);
            AssertOneLine(r);
            Assert.Contains("liblz4.so.1", r.ErrLines[0]);
            Assert.Contains("apt-get", r.ErrLines[1]);
            Assert.True(File.Exists(Path.Combine(root, "d", ImageFormat.ImageNames.IncompleteMarker)) || !Directory.Exists(Path.Combine(root, "d")));
            Assert.Contains("running", CliRunner.Run("ps", "-m", m).Out);
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    [Fact]
    public void MissingLiblz4_ByDefault_TheManagedCodecDumpsAndRestores()
    {
        string root = NewRoot();
        try
        {
            string m = Machine(root);
            string d = Path.Combine(root, "d");
            var dump = RunWithBrokenLiblz4(root, "dump", "-t", "1000", "-D", d, "--compress", "lz4", "-m", m);
            Assert.True(dump.Code == 0, dump.Err);
            Assert.False(File.Exists(Path.Combine(d, ImageFormat.ImageNames.IncompleteMarker)));
            string dest = Path.Combine(root, "dest");
            var restore = RunWithBrokenLiblz4(root, "restore", "-D", d, "-m", dest);
            Assert.True(restore.Code == 0, restore.Err);
            var verify = CliRunner.Run("verify", "-m", dest);
            Assert.True(verify.Code == 0, verify.Err);
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    private static bool Sh(string command)
    {
        var p = Process.Start(new ProcessStartInfo("sh", ["-c", command + " 2>/dev/null"]))!;
        p.WaitForExit();
        return p.ExitCode == 0;
    }
}

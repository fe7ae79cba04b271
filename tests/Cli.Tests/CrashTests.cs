using System.Diagnostics;
using Xunit;
using Xunit.Abstractions;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// SIGKILL at the N-th file-system step (CRIU_SHARP_CRASH_AT=N) of run, pre-dump, dump and restore:
/// afterwards the machine opens, lists and verifies its processes, the earlier image chain still
/// restores, and a half-written image directory is refused as incomplete.
/// </summary>
public class CrashTests(ITestOutputHelper log)
{
    private const int PointsPerCommand = 22;

    [Fact]
    public void KilledAtAnyStep_LeavesEverythingUsable()
    {
        string root = Path.Combine("/dev/shm", "criu-sharp-crash-" + Guid.NewGuid().ToString("N"));
        string baseDir = Path.Combine(root, "base");
        Directory.CreateDirectory(baseDir);
        try
        {
            // The starting point every attempt copies: a machine with a 1 MiB writer (the journal
            // has several batches), a pre-dump p1 and a full dump d0 on top of it (left running).
            string wl = Path.Combine(root, "wl.json");
            File.WriteAllText(wl, FuzzSupport.SmallWorkload(5, "1536KiB"));
            string m = Path.Combine(baseDir, "m");
            Ok("spawn", wl, "-m", m, "--memory", "64MiB");
            Ok("run", "--for", "20ms", "-m", m);
            Ok("pre-dump", "-t", "1000", "-D", Path.Combine(baseDir, "img/p1"), "-m", m);
            Ok("run", "--for", "5ms", "-m", m);
            Ok("dump", "-t", "1000", "-D", Path.Combine(baseDir, "img/d0"), "--prev-images-dir", "../p1", "-R", "-m", m);
            Ok("run", "--for", "5ms", "-m", m);

            var commands = new (string Name, string[] Args, string? NewImages)[]
            {
                ("run", ["run", "--for", "10ms", "-m", "m"], null),
                ("pre-dump", ["pre-dump", "-t", "1000", "-D", "img/p2", "--prev-images-dir", "../p1", "-m", "m"], "img/p2"),
                ("dump", ["dump", "-t", "1000", "-D", "img/d", "--prev-images-dir", "../p1", "-m", "m", "--compress", "none"], "img/d"),
                ("restore", ["restore", "-D", "img/d0", "-m", "dest"], null),
            };
            var watch = Stopwatch.StartNew();
            int kills = 0;
            foreach (var (name, args, newImages) in commands)
            {
                string work = Fresh(root, baseDir);
                var dry = Process(work, args, long.MaxValue);
                Assert.True(dry.Code == 0, $"{name} without a crash: {dry.Err}");
                long total = long.Parse(dry.ErrLines.Last().Split(':').Last().Trim());
                var points = Enumerable.Range(0, (int)Math.Min(total, PointsPerCommand))
                    .Select(i => total <= PointsPerCommand ? i + 1 : 1 + (long)Math.Round(i * (total - 1) / (double)(PointsPerCommand - 1)))
                    .Distinct().ToList();
                log.WriteLine($"{name}: {total} crash points, killing at {string.Join(',', points)}");
                foreach (long n in points)
                {
                    work = Fresh(root, baseDir);
                    var r = Process(work, args, n);
                    Assert.True(r.Code == 137, $"{name} at point {n}: expected SIGKILL, got {r.Code}: {r.Err}");
                    kills++;
                    CheckInvariants(work, name, n, newImages);
                }
            }
            log.WriteLine($"{kills} kills in {watch.Elapsed.TotalSeconds:0.0} s");
            Assert.True(kills >= 50, $"only {kills} crash points");
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    private static void CheckInvariants(string work, string name, long n, string? newImages)
    {
        string at = $"{name} killed at point {n}";
        string m = Path.Combine(work, "m");
        var ps = CliRunner.Run("ps", "-m", m);
        Assert.True(ps.Code == 0, $"{at}: ps: {ps.Err}");
        // The tree is gone only when a dump got as far as committing its images and saving the machine.
        bool committed = newImages is not null && Directory.Exists(Path.Combine(work, newImages))
            && !File.Exists(Path.Combine(work, newImages, ImageFormat.ImageNames.IncompleteMarker));
        if (!(name == "dump" && committed))
            Assert.True(ps.Out.Contains("1000"), $"{at}: the tree is gone: {ps.Out}");
        var verify = CliRunner.Run("verify", "-m", m);
        // A dump that committed and then saved the machine killed the tree: nothing is left to
        // verify, which is not a success. Killed before that save, the tree still runs.
        if (name == "dump" && committed && !ps.Out.Contains("1000"))
            Assert.True(verify.Code == (int)ExitCode.CheckFailed && verify.Err.Contains("nothing to verify"), $"{at}: verify: {verify.Code} {verify.Out}{verify.Err}");
        else
            Assert.True(verify.Code == 0, $"{at}: verify: {verify.Out}{verify.Err}");
        // The earlier chain (d0 over p1) still restores, identical enough for the self-check.
        string fresh = Path.Combine(work, "check");
        var restore = CliRunner.Run("restore", "-D", Path.Combine(work, "img/d0"), "-m", fresh);
        Assert.True(restore.Code == 0, $"{at}: restore of the earlier dump: {restore.Err}");
        Assert.Equal(0, CliRunner.Run("verify", "-m", fresh).Code);
        if (newImages is not null && Directory.Exists(Path.Combine(work, newImages)))
        {
            string dir = Path.Combine(work, newImages);
            var again = CliRunner.Run("restore", "-D", dir, "-m", Path.Combine(work, "check2"));
            if (File.Exists(Path.Combine(dir, ImageFormat.ImageNames.IncompleteMarker)))
            {
                Assert.True(again.Code == (int)ExitCode.BadImage, $"{at}: restore of the half-written {newImages}: {again.Code} {again.Err}");
                Assert.Contains("incomplete", again.ErrLines[0]);
                Assert.Single(again.ErrLines);
            }
            else if (name == "dump")
                Assert.True(again.Code == 0, $"{at}: the committed dump does not restore: {again.Err}");
        }
        if (name == "restore" && Directory.Exists(Path.Combine(work, "dest")))
        {
            // The destination either has the whole tree or is empty enough to restore into again.
            var dps = CliRunner.Run("ps", "-m", Path.Combine(work, "dest"));
            if (dps.Code == 0 && dps.Out.Contains("1000"))
                Assert.Equal(0, CliRunner.Run("verify", "-m", Path.Combine(work, "dest")).Code);
            else
            {
                var re = CliRunner.Run("restore", "-D", Path.Combine(work, "img/d0"), "-m", Path.Combine(work, "dest"));
                Assert.True(re.Code == 0, $"{at}: restore again into the destination: {re.Err}");
            }
        }
    }

    private static string Fresh(string root, string baseDir)
    {
        string work = Path.Combine(root, "work");
        if (Directory.Exists(work))
            Directory.Delete(work, true);
        var cp = System.Diagnostics.Process.Start("cp", ["-a", "--sparse=always", baseDir, work])!;
        cp.WaitForExit();
        Assert.Equal(0, cp.ExitCode);
        return work;
    }

    private static void Ok(params string[] args)
    {
        var r = CliRunner.Run(args);
        Assert.True(r.Code == 0, $"{string.Join(' ', args)}: {r.Err}");
    }

    private static CliRunner.Result Process(string workDir, string[] args, long crashAt)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = workDir };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment.Remove("CRIU_SHARP_MACHINE");
        psi.Environment["CRIU_SHARP_CRASH_AT"] = crashAt.ToString();
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        string stderr = p.StandardError.ReadToEnd();
        if (!p.WaitForExit(60_000))
        {
            p.Kill(true);
            throw new TimeoutException($"criu-sharp {string.Join(' ', args)} did not finish in 60 s");
        }
        return new CliRunner.Result(p.ExitCode, stdout.Result, stderr);
    }
}

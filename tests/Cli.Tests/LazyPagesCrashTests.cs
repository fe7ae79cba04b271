using System.Diagnostics;
using System.Globalization;
using CriuSharp.Dumper;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel.Machine;
using Xunit;
using Xunit.Abstractions;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// SIGKILL of either side of a lazy (post-copy) session at exact points (CRIU_SHARP_CRASH_AT=N):
/// the lazy-pages daemon (before its first PS_IOV_GET, after N faults, mid-drain, before CLOSE,
/// while it saves the machine, around the lazy-restore mark) and the source's dump --lazy-pages
/// (while it writes the images, while it serves GETs, at CLOSE, while it saves).
/// <list type="bullet">
/// <item>Daemon killed: the destination stays marked incomplete and refuses to run or verify the tree
/// that lacks pages; the source keeps its pages and serves the rerun, which brings every page.</item>
/// <item>Source killed: its tree runs on unchanged (the machine is saved only after CLOSE); the
/// destination's daemon stops the restored tree with one clear error naming the lost pages and the
/// machine stays marked incomplete; a rerun of the whole lazy migration succeeds.</item>
/// </list>
/// </summary>
public class LazyPagesCrashTests(ITestOutputHelper log)
{
    private const int DaemonPoints = 8;
    private const int SourcePointsPerPhase = 3;
    private static readonly TimeSpan Io = TimeSpan.FromSeconds(30);

    [Fact]
    public void KillingEitherSideOfALazySession_NeverRunsOnWithMissingPages_AndARerunSucceeds()
    {
        string root = Path.Combine("/dev/shm", "criu-sharp-lazycrash-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(root);
        try
        {
            string wl = Path.Combine(root, "wl.json");
            File.WriteAllText(wl, FuzzSupport.SmallWorkload(11, "1MiB"));
            string baseSrc = Path.Combine(root, "base", "src");
            Ok(CliRunner.Run("spawn", wl, "-m", baseSrc, "--memory", "64MiB"), "spawn");
            Ok(CliRunner.Run("run", "--for", "20ms", "-m", baseSrc), "run");
            var watch = Stopwatch.StartNew();
            int kills = DaemonSide(root) + SourceSide(root);
            log.WriteLine($"{kills} kills in {watch.Elapsed.TotalSeconds:0.0} s");
            Assert.True(kills >= 20, $"only {kills} kills");
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    /// <summary>The daemon killed at spread points; the source is served from this process (its pages are reusable).</summary>
    private int DaemonSide(string root)
    {
        string d = Fresh(root, "d");
        string src = Path.Combine(d, "src"), img = Path.Combine(d, "img"), dst0 = Path.Combine(d, "dst0"), dst = Path.Combine(d, "dst");
        var store = new LazyPageStore();
        // The source's dump --lazy-pages, in this process: its machine is never saved, so its tree
        // stays as it was whatever happens to the daemons.
        using (var source = SimMachine.Open(src, Io))
            Criu.Dump(source.AsKernelApi(), new DumpOptions { Pid = 1000, ImagesDir = img, LazyPages = store, LeaveRunning = true });
        Assert.True(store.Pages > 0);
        Ok(CliRunner.Run("restore", "-m", dst0, "-D", img, "--lazy-pages"), "restore --lazy-pages");
        Assert.True(File.Exists(Path.Combine(dst0, SimMachine.LazyRestoreMarkerName)), "restore --lazy-pages did not mark the machine");

        long total;
        List<(long N, string Name)> named;
        {
            CopyMachine(dst0, dst);
            using var server = LazyPageServer.Start(store, "127.0.0.1", 0);
            var serving = Task.Run(() => server.Serve(Io, out _));
            var dry = Child([.. Daemon(dst, img, server.Port)], long.MaxValue);
            Assert.True(dry.Code == 0, $"lazy-pages without a crash: {dry.Err}");
            Assert.True(serving.Wait(Io) && serving.Result, "the dry run did not CLOSE");
            total = Points(dry.Err);
            named = Named(dry.Err);
        }
        // Before the first GET, after a few faults, mid-drain, at the last GET, before CLOSE,
        // while saving the machine, between the save and the removal of the mark; then spread.
        var gets = named.Where(x => x.Name == "lazy.get").Select(x => x.N).ToList();
        Assert.True(gets.Count >= 3, $"only {gets.Count} GETs");
        var points = new List<long> { gets[0], gets[1], gets[gets.Count / 2], gets[^1] };
        points.AddRange(named.Where(x => x.Name is "lazy.close" or "lazy.unmarked").Select(x => x.N));
        points.Add(named.First(x => x.Name == "state.tmp").N);
        points.AddRange(Spread(1, total, DaemonPoints));
        points = points.Distinct().Order().ToList();
        log.WriteLine($"lazy-pages: {total} crash points, killing at {string.Join(',', points)}");
        int kills = 0;
        foreach (long n in points)
        {
            string at = $"lazy-pages killed at point {n}";
            CopyMachine(dst0, dst);
            using var server = LazyPageServer.Start(store, "127.0.0.1", 0);
            var dropped = new List<string>();
            var serving = Task.Run(() => server.Serve(Io, out _, dropped.Add));
            var r = Child([.. Daemon(dst, img, server.Port)], n);
            Assert.True(r.Code == 137, $"{at}: expected SIGKILL, got {r.Code}: {r.Err}");
            kills++;
            log.WriteLine($"{at} ({named.FirstOrDefault(x => x.N == n).Name}): {(File.Exists(Path.Combine(dst, SimMachine.LazyRestoreMarkerName)) ? "marked incomplete" : "not marked")}");
            // Marked until the machine holding every page is saved; while marked, the tree is
            // neither run nor checked.
            if (File.Exists(Path.Combine(dst, SimMachine.LazyRestoreMarkerName)))
            {
                var v = CliRunner.Run("verify", "-m", dst);
                Assert.True(v.Code == (int)ExitCode.BadImage, $"{at}: verify of the marked machine: {v.Code} {v.Out}{v.Err}");
                Assert.Contains("lazy restore", v.ErrLines[0]);
                Assert.Contains("incomplete", v.ErrLines[0]);
                var run = CliRunner.Run("run", "-m", dst, "--for", "1ms");
                Assert.True(run.Code == (int)ExitCode.BadImage, $"{at}: run of the marked machine: {run.Code} {run.Err}");
            }
            // The rerun: the source still serves (a broken connection is not CLOSE).
            var again = CliRunner.Run([.. Daemon(dst, img, server.Port)]);
            Assert.True(again.Code == 0, $"{at}: rerun: {again.Code} {again.Out}{again.Err}");
            Assert.True(serving.Wait(Io) && serving.Result, $"{at}: the rerun did not CLOSE the session ({string.Join("; ", dropped)})");
            Assert.False(File.Exists(Path.Combine(dst, SimMachine.LazyRestoreMarkerName)), $"{at}: still marked after the rerun");
            var ok = CliRunner.Run("verify", "-m", dst);
            Assert.True(ok.Code == 0, $"{at}: verify after the rerun: {ok.Out}{ok.Err}");
        }
        // The source machine was never saved: its tree runs on as before.
        var src0 = CliRunner.Run("verify", "-m", src);
        Assert.True(src0.Code == 0, $"the source tree: {src0.Out}{src0.Err}");
        return kills;
    }

    /// <summary>The source's dump --lazy-pages killed at points of its dump and of its serving.</summary>
    private int SourceSide(string root)
    {
        string s = Fresh(root, "s");
        var dry = Attempt(s, long.MaxValue);
        Assert.True(dry.Dump.Code == 0 && dry.Daemon is { Code: 0 }, $"without a crash: {dry.Dump.Err} {dry.Daemon?.Err}");
        long beforeServing = long.Parse(dry.Dump.ErrLines.Single(l => l.Contains("crash points before serving")).Split(':').Last().Trim(), CultureInfo.InvariantCulture);
        long total = Points(dry.Dump.Err);
        var named = Named(dry.Dump.Err);
        var served = named.Where(x => x.Name == "lazy.served").Select(x => x.N).ToList();
        Assert.True(served.Count >= 2, $"only {served.Count} GETs served");
        // Spread over the dump; the first GET served, one mid-session, CLOSE received, the save after it.
        var points = Spread(1, beforeServing, SourcePointsPerPhase)
            .Concat([served[0], served[served.Count / 2], served[^1], named.Single(x => x.Name == "lazy.close-received").N, named.Last(x => x.Name == "state.renamed").N])
            .Distinct().Order().ToList();
        log.WriteLine($"dump --lazy-pages: {beforeServing} crash points before serving, {total} in all, killing at {string.Join(',', points)}");
        int kills = 0;
        foreach (long n in points)
        {
            string at = $"dump --lazy-pages killed at point {n}";
            s = Fresh(root, "s");
            string src = Path.Combine(s, "src"), dst = Path.Combine(s, "dst"), img = Path.Combine(s, "img");
            var (dump, daemon) = Attempt(s, n);
            Assert.True(dump.Code == 137, $"{at}: expected SIGKILL, got {dump.Code}: {dump.Err}");
            kills++;
            bool migrated = daemon is { Code: 0 };
            log.WriteLine($"{at} ({named.FirstOrDefault(x => x.N == n).Name}): {(daemon is null ? "before serving" : migrated ? "after the daemon had every page" : $"daemon exit {daemon.Code}")}");
            if (daemon is null)
            {
                // Killed while writing the images: they are refused as incomplete.
                if (File.Exists(Path.Combine(img, ImageNames.IncompleteMarker)))
                {
                    var re = CliRunner.Run("restore", "-m", dst, "-D", img, "--lazy-pages");
                    Assert.True(re.Code == (int)ExitCode.BadImage, $"{at}: restore of the half-written images: {re.Code} {re.Err}");
                }
            }
            else if (!migrated)
            {
                // Killed while serving: the restored tree is stopped, with one error and the lost ranges.
                Assert.True(daemon.Code == (int)ExitCode.Environment, $"{at}: lazy-pages: {daemon.Code} {daemon.Err}");
                Assert.Contains(daemon.ErrLines, l => l.StartsWith("criu-sharp: lost: process 1000 0x", StringComparison.Ordinal));
                // Besides the lost ranges: one error line and its hint.
                var other = daemon.ErrLines.Where(l => !l.StartsWith("criu-sharp: lost:", StringComparison.Ordinal)).ToList();
                Assert.True(other.Count <= 2 && other[0].StartsWith("criu-sharp: ", StringComparison.Ordinal) && other[0].Contains("never arrived"), $"{at}: {daemon.Err}");
                Assert.DoesNotContain(" 1000 ", " " + CliRunner.Run("ps", "-m", dst).Out.Replace('\n', ' ') + " ");
                Assert.True(File.Exists(Path.Combine(dst, SimMachine.LazyRestoreMarkerName)), $"{at}: the destination is not marked incomplete");
            }
            // The source: its machine is saved only after CLOSE, so the tree runs on unchanged
            // unless the whole migration had finished (then it may be gone, as after a dump).
            var v = CliRunner.Run("verify", "-m", src);
            if (migrated)
                Assert.True(v.Code == 0 || v.Err.Contains("nothing to verify"), $"{at}: source: {v.Code} {v.Out}{v.Err}");
            else
                Assert.True(v.Code == 0, $"{at}: the source tree: {v.Out}{v.Err}");
            if (migrated)
            {
                Assert.Equal(0, CliRunner.Run("verify", "-m", dst).Code);
                continue;
            }
            // The rerun of the whole lazy migration, into the same destination.
            var rerun = Attempt(s, long.MaxValue, "img2");
            Assert.True(rerun.Dump.Code == 0 && rerun.Daemon is { Code: 0 }, $"{at}: rerun: {rerun.Dump.Err} / {rerun.Daemon?.Out}{rerun.Daemon?.Err}");
            Assert.False(File.Exists(Path.Combine(dst, SimMachine.LazyRestoreMarkerName)), $"{at}: still marked after the rerun");
            var ok = CliRunner.Run("verify", "-m", dst);
            Assert.True(ok.Code == 0, $"{at}: verify after the rerun: {ok.Out}{ok.Err}");
        }
        return kills;
    }

    /// <summary>
    /// dump --lazy-pages as a child (crash point armed), then, if it came to serve, restore
    /// --lazy-pages and lazy-pages in this process against it.
    /// </summary>
    private static (CliRunner.Result Dump, CliRunner.Result? Daemon) Attempt(string s, long crashAt, string images = "img")
    {
        string src = Path.Combine(s, "src"), dst = Path.Combine(s, "dst"), img = Path.Combine(s, images);
        using var p = Start(["dump", "-m", src, "-t", "1000", "-D", img, "--lazy-pages", "--address", "127.0.0.1", "--port", "0", "--ps-timeout", "20"], crashAt);
        var err = p.StandardError.ReadToEndAsync();
        string? port = null;
        while (p.StandardOutput.ReadLine() is { } line)
            if (line.StartsWith("listening on ", StringComparison.Ordinal))
            {
                port = line[(line.LastIndexOf(':') + 1)..];
                break;
            }
        CliRunner.Result? daemon = null;
        if (port is not null)
        {
            var r = CliRunner.Run("restore", "-m", dst, "-D", img, "--lazy-pages");
            Assert.True(r.Code == 0, $"restore --lazy-pages: {r.Err}");
            daemon = CliRunner.Run([.. Daemon(dst, img, int.Parse(port, CultureInfo.InvariantCulture))]);
        }
        var rest = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(60_000))
        {
            p.Kill(true);
            throw new TimeoutException("dump --lazy-pages did not finish in 60 s");
        }
        p.WaitForExit();
        return (new CliRunner.Result(p.ExitCode, rest.Result, err.Result), daemon);
    }

    private static string[] Daemon(string dst, string img, int port) =>
        ["lazy-pages", "-m", dst, "-D", img, "--page-server", "--address", "127.0.0.1", "--port", port.ToString(CultureInfo.InvariantCulture), "--ps-timeout", "20"];

    private static List<long> Spread(long first, long last, int count)
    {
        if (last < first)
            return [];
        long n = last - first + 1;
        return Enumerable.Range(0, (int)Math.Min(n, count))
            .Select(i => n <= count ? first + i : first + (long)Math.Round(i * (n - 1) / (double)(count - 1)))
            .Distinct().ToList();
    }

    private static long Points(string stderr) =>
        long.Parse(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last(l => l.Contains("crash points passed")).Split(':').Last().Trim(), CultureInfo.InvariantCulture);

    private static List<(long N, string Name)> Named(string stderr) =>
        stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Where(l => l.StartsWith("criu-sharp: crash point ", StringComparison.Ordinal))
            .Select(l => l["criu-sharp: crash point ".Length..].Split(": "))
            .Select(a => (long.Parse(a[0], CultureInfo.InvariantCulture), a[1].Trim()))
            .ToList();

    private static void Ok(CliRunner.Result r, string what) => Assert.True(r.Code == 0, $"{what}: {r.Err}");

    private static string Fresh(string root, string name)
    {
        string work = Path.Combine(root, name);
        if (Directory.Exists(work))
            Directory.Delete(work, true);
        CopyMachine(Path.Combine(root, "base"), work);
        return work;
    }

    private static void CopyMachine(string from, string to)
    {
        if (Directory.Exists(to))
            Directory.Delete(to, true);
        var cp = Process.Start("cp", ["-a", "--sparse=always", from, to])!;
        cp.WaitForExit();
        Assert.Equal(0, cp.ExitCode);
    }

    private static Process Start(string[] args, long crashAt)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll"));
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        psi.Environment.Remove("CRIU_SHARP_MACHINE");
        psi.Environment["CRIU_SHARP_CRASH_AT"] = crashAt.ToString(CultureInfo.InvariantCulture);
        // A run without a kill names every point it passes, so the kills can aim at named ones.
        if (crashAt == long.MaxValue)
            psi.Environment["CRIU_SHARP_CRASH_NAMES"] = "1";
        return Process.Start(psi)!;
    }

    private static CliRunner.Result Child(string[] args, long crashAt)
    {
        using var p = Start(args, crashAt);
        var o = p.StandardOutput.ReadToEndAsync();
        var e = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(60_000))
        {
            p.Kill(true);
            throw new TimeoutException($"criu-sharp {string.Join(' ', args)} did not finish in 60 s");
        }
        p.WaitForExit();
        return new CliRunner.Result(p.ExitCode, o.Result, e.Result);
    }
}

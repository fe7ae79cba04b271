using System.Diagnostics;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;
using Xunit;
using Xunit.Abstractions;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// SIGKILL of either side of a page-server session (CRIU_SHARP_CRASH_AT=N: protocol headers sent or
/// received, and the server's image-writing steps): the source tree runs on unchanged, the
/// server's directory is left marked incomplete (or complete, if the kill came after CLOSE), and
/// a rerun of the pre-dump through a fresh server succeeds.
/// </summary>
public class PageServerCrashTests(ITestOutputHelper log)
{
    private const int PointsPerSide = 10;
    private static readonly TimeSpan Io = TimeSpan.FromSeconds(30);

    [Fact]
    public void KillingEitherSide_LeavesTheSourceRunning_AndARerunSucceeds()
    {
        string root = Path.Combine("/dev/shm", "criu-sharp-pscrash-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(root);
        try
        {
            string wl = Path.Combine(root, "wl.json");
            File.WriteAllText(wl, FuzzSupport.SmallWorkload(7, "1MiB"));
            string baseM = Path.Combine(root, "base", "m");
            Assert.Equal(0, CliRunner.Run("spawn", wl, "-m", baseM, "--memory", "64MiB").Code);
            Assert.Equal(0, CliRunner.Run("run", "--for", "20ms", "-m", baseM).Code);
            int kills = 0;
            foreach (var side in new[] { "client", "server" })
            {
                string work = Fresh(root);
                long total = Attempt(work, Path.Combine(work, "m"), side, long.MaxValue, out _);
                var points = Enumerable.Range(0, PointsPerSide)
                    .Select(i => 1 + (long)Math.Round(i * (total - 1) / (double)(PointsPerSide - 1)))
                    .Distinct().ToList();
                log.WriteLine($"{side}: {total} crash points, killing at {string.Join(',', points)}");
                foreach (long n in points)
                {
                    work = Fresh(root);
                    string m = Path.Combine(work, "m");
                    Attempt(work, m, side, n, out int code);
                    Assert.True(code == 137, $"{side} at point {n}: expected SIGKILL, got {code}");
                    kills++;
                    string at = $"{side} killed at point {n}";
                    var verify = CliRunner.Run("verify", "-m", m);
                    Assert.True(verify.Code == 0, $"{at}: the source: {verify.Out}{verify.Err}");
                    Assert.Contains("1000", CliRunner.Run("ps", "-m", m).Out);
                    string server = Path.Combine(work, "server");
                    if (Directory.Exists(server) && Directory.EnumerateFileSystemEntries(server).Any()
                        && File.Exists(Path.Combine(server, ImageNames.IncompleteMarker)))
                        Assert.Throws<ImageFormatException>(() => ImageSet.Open(server));
                    // The rerun: a fresh server over the same directories.
                    using var ps = PageServerListener.Start(new PageServerOptions { ImagesDir = server, Address = "127.0.0.1", Port = 0, IdleTimeout = Io, Sessions = 1 });
                    var serving = Task.Run(() => ps.Serve());
                    var again = CliRunner.Run("pre-dump", "-t", "1000", "-D", Path.Combine(work, "local"), "-m", m,
                        "--page-server", "--address", "127.0.0.1", "--port", ps.Port.ToString(System.Globalization.CultureInfo.InvariantCulture));
                    Assert.True(again.Code == 0, $"{at}: rerun: {again.Err}");
                    Assert.True(SessionClosed(serving), $"{at}: rerun session");
                    Assert.False(File.Exists(Path.Combine(server, ImageNames.IncompleteMarker)), $"{at}: rerun left the directory incomplete");
                }
            }
            Assert.True(kills >= 2 * PointsPerSide - 2, $"only {kills} kills");
        }
        finally
        {
            Directory.Delete(root, true);
        }
    }

    /// <summary>One pre-dump through a page server with the crash point armed on one side; returns the points that side passed.</summary>
    private static long Attempt(string root, string m, string side, long crashAt, out int code)
    {
        string server = Path.Combine(root, "server"), local = Path.Combine(root, "local");
        string dll = Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        ProcessStartInfo Psi(params string[] args)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add(dll);
            foreach (var a in args) psi.ArgumentList.Add(a);
            psi.Environment.Remove("CRIU_SHARP_MACHINE");
            psi.Environment["CRIU_SHARP_CRASH_AT"] = crashAt.ToString(System.Globalization.CultureInfo.InvariantCulture);
            return psi;
        }
        string stderr;
        if (side == "client")
        {
            using var ps = PageServerListener.Start(new PageServerOptions { ImagesDir = server, Address = "127.0.0.1", Port = 0, IdleTimeout = Io, Sessions = 1 });
            using var cts = new CancellationTokenSource();
            var serving = Task.Run(() => ps.Serve(null, cts.Token));
            using var p = Process.Start(Psi("pre-dump", "-t", "1000", "-D", local, "-m", m,
                "--page-server", "--address", "127.0.0.1", "--port", ps.Port.ToString(System.Globalization.CultureInfo.InvariantCulture)))!;
            stderr = Wait(p, out code);
            cts.Cancel();
            serving.Wait(Io);
        }
        else
        {
            using var p = Process.Start(Psi("page-server", "-D", server, "--address", "127.0.0.1", "--port", "0", "--ps-timeout", "30"))!;
            var first = p.StandardOutput.ReadLineAsync();
            Assert.True(first.Wait(Io) && first.Result is { } l && l.StartsWith("listening on", StringComparison.Ordinal), "page-server did not start");
            string port = first.Result![(first.Result!.LastIndexOf(':') + 1)..];
            var client = CliRunner.Run("pre-dump", "-t", "1000", "-D", local, "-m", m, "--page-server", "--address", "127.0.0.1", "--port", port, "--ps-timeout", "30");
            if (client.Code != 0)
            {
                // One line, plus the hint the exit-code map adds for connection failures.
                Assert.Equal((int)ExitCode.Environment, client.Code);
                Assert.StartsWith("criu-sharp: ", client.ErrLines[0]);
                Assert.True(client.ErrLines.Length <= 2, client.Err);
            }
            stderr = Wait(p, out code);
        }
        if (crashAt == long.MaxValue)
            Assert.True(code == 0, $"{side} without a crash: {stderr}");
        var last = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault() ?? "";
        return crashAt == long.MaxValue ? long.Parse(last.Split(':').Last().Trim(), System.Globalization.CultureInfo.InvariantCulture) : 0;
    }

    private static string Fresh(string root)
    {
        string work = Path.Combine(root, "work");
        if (Directory.Exists(work))
            Directory.Delete(work, true);
        var cp = Process.Start("cp", ["-a", "--sparse=always", Path.Combine(root, "base"), work])!;
        cp.WaitForExit();
        Assert.Equal(0, cp.ExitCode);
        return work;
    }

    private static bool SessionClosed(Task<IReadOnlyList<PageServerSessionResult>> serving) =>
        serving.Wait(Io) && serving.Result.Single().Closed;

    private static string Wait(Process p, out int code)
    {
        var err = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(60_000))
        {
            p.Kill(true);
            throw new TimeoutException("criu-sharp did not finish in 60 s");
        }
        err.Wait(10_000);
        code = p.ExitCode;
        return err.Result;
    }
}

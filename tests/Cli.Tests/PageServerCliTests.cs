using System.Diagnostics;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>page-server as its own process, fed by pre-dump/dump --page-server; restore from what it wrote.</summary>
public class PageServerCliTests
{
    private static (Process Proc, int Port) StartServer(string images, params string[] extra)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { dll, "page-server", "-D", images, "--address", "127.0.0.1", "--port", "0", "--ps-timeout", "30" }.Concat(extra))
            psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        var line = p.StandardOutput.ReadLineAsync();
        if (!line.Wait(60_000) || line.Result is not { } l || !l.StartsWith("listening on 127.0.0.1:", StringComparison.Ordinal))
        {
            p.Kill(true);
            throw new InvalidOperationException("page-server did not report its port");
        }
        return (p, int.Parse(l[(l.LastIndexOf(':') + 1)..], System.Globalization.CultureInfo.InvariantCulture));
    }

    private static string Finish(Process p)
    {
        var err = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(60_000))
        {
            p.Kill(true);
            Assert.Fail("page-server did not exit after its session");
        }
        Assert.True(err.Wait(10_000));
        Assert.Equal(0, p.ExitCode);
        return err.Result;
    }

    [Fact]
    public void PreDumpAndDump_ThroughPageServerProcesses_Restore()
    {
        using var m = new TempMachine();
        string src = Path.Combine(m.Dir, "src"), dst = Path.Combine(m.Dir, "dst");
        string wl = Path.Combine(CliRunner.RepoRoot(), "samples", "idle.json");
        var spawn = CliRunner.Run("spawn", wl, "--machine", src);
        Assert.Equal(0, spawn.Code);
        string pid = spawn.Out.Split(' ', '\n')[0].Trim();
        string server1 = Path.Combine(m.Dir, "server", "1"), server2 = Path.Combine(m.Dir, "server", "2");
        var (ps1, port1) = StartServer(server1);
        var pre = CliRunner.Run("pre-dump", "-t", pid, "-D", Path.Combine(m.Dir, "local", "1"), "--machine", src,
            "--page-server", "--address", "127.0.0.1", "--port", port1.ToString(System.Globalization.CultureInfo.InvariantCulture), "--ps-compress");
        Assert.True(pre.Code == 0, pre.Err);
        string log1 = Finish(ps1);
        Assert.Contains("pages written", log1);
        var (ps2, port2) = StartServer(server2, "--prev-images-dir", "../1", "--ps-layout", "pre-4.2");
        var dump = CliRunner.Run("dump", "-t", pid, "-D", Path.Combine(m.Dir, "local", "2"), "--prev-images-dir", "../1", "--machine", src,
            "--page-server", "--address", "127.0.0.1", "--port", port2.ToString(System.Globalization.CultureInfo.InvariantCulture), "--ps-layout", "pre-4.2");
        Assert.True(dump.Code == 0, dump.Err);
        Finish(ps2);
        foreach (var (local, server) in new[] { ("1", server1), ("2", server2) })
            foreach (var f in Directory.GetFiles(Path.Combine(m.Dir, "local", local)))
                if (new FileInfo(f).LinkTarget is null)
                    File.Copy(f, Path.Combine(server, Path.GetFileName(f)), overwrite: true);
        var restore = CliRunner.Run("restore", "-D", server2, "--machine", dst);
        Assert.True(restore.Code == 0, restore.Err);
        var verify = CliRunner.Run("verify", "--machine", dst);
        Assert.True(verify.Code == 0, verify.Out + verify.Err);
    }

    [Theory]
    [InlineData(2, "pre-dump", "-t", "1000", "-D", "x", "--page-server")]
    [InlineData(2, "page-server", "-D", "x", "--port", "70000")]
    [InlineData(2, "page-server", "-D", "x", "--ps-layout", "25")]
    [InlineData(3, "page-server", "-D", "x", "--port", "0", "--prev-images-dir", "../nowhere")]
    public void BadPageServerOptions_GiveOneLineAndTheDocumentedCode(int code, params string[] args)
    {
        using var m = new TempMachine();
        Directory.CreateDirectory(m.Dir);
        var full = args.Select(a => a == "x" ? Path.Combine(m.Dir, "images") : a).ToArray();
        var r = CliRunner.Run(full);
        Assert.Equal(code, r.Code);
        Assert.StartsWith("criu-sharp: ", r.ErrLines[0]);
        Assert.DoesNotContain("   at ", r.Err);
    }
}

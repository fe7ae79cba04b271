using System.Diagnostics;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// dump --lazy-pages, restore --lazy-pages and the lazy-pages daemon as three commands over
/// loopback TCP (criu/uffd.c, criu/page-xfer.c PS_IOV_GET); the source is the built executable.
/// </summary>
public sealed class LazyPagesCliTests : IDisposable
{
    private static readonly TimeSpan Io = TimeSpan.FromSeconds(60);
    private readonly string _root = Path.Combine(Path.GetTempPath(), "criu-sharp-lazycli-" + Guid.NewGuid().ToString("N"));

    public LazyPagesCliTests() => Directory.CreateDirectory(_root);

    public void Dispose() => Directory.Delete(_root, true);

    private string P(string name) => Path.Combine(_root, name);

    /// <summary>A source machine with one hotcold process that ran 50 ms, dumped lazily by a child process; returns it and its port.</summary>
    private (Process Dump, string Port) StartLazyDump(params string[] extra)
    {
        File.WriteAllText(P("w.json"), MigrateScratch.HotCold);
        Assert.Equal(0, CliRunner.Run("spawn", "-m", P("src"), P("w.json")).Code);
        Assert.Equal(0, CliRunner.Run("run", "-m", P("src"), "--for", "50ms").Code);
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll"));
        foreach (var a in new[] { "dump", "-m", P("src"), "-t", "1000", "-D", P("img"), "--lazy-pages", "--address", "127.0.0.1", "--port", "0", "--ps-timeout", "60" }.Concat(extra))
            psi.ArgumentList.Add(a);
        psi.Environment.Remove("CRIU_SHARP_MACHINE");
        var p = Process.Start(psi)!;
        for (int i = 0; i < 4; i++)
        {
            var line = p.StandardOutput.ReadLineAsync();
            Assert.True(line.Wait(Io), "dump --lazy-pages printed nothing");
            if (line.Result is { } l && l.StartsWith("listening on ", StringComparison.Ordinal))
                return (p, l[(l.LastIndexOf(':') + 1)..]);
        }
        p.Kill(true);
        throw new InvalidOperationException("dump --lazy-pages did not listen: " + p.StandardError.ReadToEnd());
    }

    [Fact]
    public void DumpRestoreLazyPages_MovesEveryPage_AndTheWorkloadVerifies()
    {
        var (dump, port) = StartLazyDump();
        using (dump)
        {
            var plain = CliRunner.Run("restore", "-m", P("plain"), "-D", P("img"));
            Assert.Equal(3, plain.Code);
            Assert.Contains("--lazy-pages", plain.Err);

            var r = CliRunner.Run("restore", "-m", P("dst"), "-D", P("img"), "--lazy-pages");
            Assert.True(r.Code == 0, r.Err);
            Assert.Contains("lazy pages wait for", r.Out);
            var l = CliRunner.Run("lazy-pages", "-m", P("dst"), "-D", P("img"), "--page-server", "--address", "127.0.0.1", "--port", port, "--json");
            Assert.True(l.Code == 0, l.Err + l.Out);
            var j = System.Text.Json.JsonDocument.Parse(l.Out).RootElement;
            long got = j.GetProperty("pages_by_fault").GetInt64() + j.GetProperty("pages_by_drain").GetInt64();
            Assert.True(got > 0);
            Assert.True(j.GetProperty("vmas_verified").GetInt32() > 0);
            Assert.True(dump.WaitForExit(60_000), "the source kept serving after CLOSE");
            string served = dump.StandardOutput.ReadToEnd();
            Assert.Equal(0, dump.ExitCode);
            Assert.Contains($"served {got} of {got} lazy pages; the daemon closed the session", served);
            var v = CliRunner.Run("verify", "-m", P("dst"));
            Assert.True(v.Code == 0, v.Out + v.Err);
            Assert.Equal(0, CliRunner.Run("run", "-m", P("dst"), "--for", "20ms").Code);
            Assert.Equal(0, CliRunner.Run("verify", "-m", P("dst")).Code);
        }
    }

    [Fact]
    public void SourceGone_StopsTheRestoredTree_ListsTheLostPages_Exit7()
    {
        var (dump, port) = StartLazyDump();
        using (dump)
        {
            dump.Kill(true);
            dump.WaitForExit();
        }
        Assert.Equal(0, CliRunner.Run("restore", "-m", P("dst"), "-D", P("img"), "--lazy-pages").Code);
        var l = CliRunner.Run("lazy-pages", "-m", P("dst"), "-D", P("img"), "--page-server", "--address", "127.0.0.1", "--port", port);
        Assert.Equal(7, l.Code);
        Assert.Contains(l.ErrLines, x => x.StartsWith("criu-sharp: lost: process 1000 0x", StringComparison.Ordinal));
        Assert.Contains("never arrived", l.Err);
        var ps = CliRunner.Run("ps", "-m", P("dst"));
        Assert.DoesNotContain(" 1000 ", " " + ps.Out.Replace('\n', ' ') + " ");
    }

    [Fact]
    public void LazyPages_OnImagesWithoutLazyPages_IsBadInput()
    {
        File.WriteAllText(P("w.json"), MigrateScratch.HotCold);
        Assert.Equal(0, CliRunner.Run("spawn", "-m", P("src"), P("w.json")).Code);
        Assert.Equal(0, CliRunner.Run("dump", "-m", P("src"), "-t", "1000", "-D", P("img")).Code);
        Assert.Equal(0, CliRunner.Run("restore", "-m", P("dst"), "-D", P("img")).Code);
        var l = CliRunner.Run("lazy-pages", "-m", P("dst"), "-D", P("img"), "--page-server", "--address", "127.0.0.1", "--port", "1");
        Assert.Equal(3, l.Code);
        Assert.Contains("no lazy pages", l.Err);
    }

    [Fact]
    public void LazySessionOverTls_RefusesADaemonWithoutTheRightCertificate_AndServesOneWithIt()
    {
        using var certs = new TestCerts(P("pki"), "criu-sharp test CA");
        using var rogue = new TestCerts(P("rogue-pki"), "someone else");
        var (sc, sk) = certs.Leaf("localhost");
        var (cc, ck) = certs.Leaf("daemon");
        var (rc, rk) = rogue.Leaf("daemon");
        string[] Tls(string cert, string key) => ["--tls", "--tls-cacert", certs.CaPath, "--tls-cert", cert, "--tls-key", key];
        var (dump, port) = StartLazyDump(Tls(sc, sk));
        using (dump)
        {
            string[] Daemon(string m) => ["lazy-pages", "-m", P(m), "-D", P("img"), "--page-server", "--address", "127.0.0.1", "--port", port, "--ps-timeout", "20"];
            // Without TLS, and with a certificate another CA signed: refused; those restored trees
            // are stopped, never run on with pages missing.
            foreach (var (m, extra) in new[] { ("plain", Array.Empty<string>()), ("rogue", Tls(rc, rk)) })
            {
                Assert.Equal(0, CliRunner.Run("restore", "-m", P(m), "-D", P("img"), "--lazy-pages").Code);
                var refused = CliRunner.Run([.. Daemon(m), .. extra]);
                Assert.True(refused.Code == 7, $"{m}: {refused.Code} {refused.Out}{refused.Err}");
                Assert.Contains("never arrived", refused.Err);
            }
            // The source still serves: a daemon with the right certificate gets every page.
            Assert.Equal(0, CliRunner.Run("restore", "-m", P("dst"), "-D", P("img"), "--lazy-pages").Code);
            var l = CliRunner.Run([.. Daemon("dst"), .. Tls(cc, ck)]);
            Assert.True(l.Code == 0, l.Err + l.Out);
            Assert.True(dump.WaitForExit(60_000), "the source kept serving after CLOSE");
            Assert.Equal(0, dump.ExitCode);
            string err = dump.StandardError.ReadToEnd();
            Assert.Equal(2, err.Split('\n').Count(x => x.Contains("connection was dropped", StringComparison.Ordinal)));
            Assert.Equal(0, CliRunner.Run("verify", "-m", P("dst")).Code);
        }
    }
}

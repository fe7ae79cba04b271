using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// migrate --transport tcp --tls: the control connection, each pre-dump's page server and the lazy
/// page session run over TLS with CRIU's options; a peer whose certificate another CA signed is
/// refused. Certificates are made at run time; ports are ephemeral, on loopback.
/// </summary>
public class MigrateTlsTests : IClassFixture<MigrateScratch>
{
    private readonly MigrateScratch _s;
    public MigrateTlsTests(MigrateScratch s) => _s = s;

    private string P(string name) => Path.Combine(_s.Dir, name);

    private static string[] Tls(string ca, (string Cert, string Key) leaf) =>
        ["--tls", "--tls-cacert", ca, "--tls-cert", leaf.Cert, "--tls-key", leaf.Key];

    [Theory]
    [InlineData("precopy")]
    [InlineData("hybrid")]
    public void MigrateOverTls_Verifies(string mode)
    {
        string pki = P("pki-" + mode + "-" + Guid.NewGuid().ToString("N"));
        using var certs = new TestCerts(pki, "criu-sharp test CA");
        // migrate starts its own migrate-service with the same options: one certificate both ways, as
        // CRIU's page server and its client are usually set up.
        var r = CliRunner.Run(["migrate", .. _s.Args("--transport", "tcp", "--mode", mode, "--policy", "fixed:1"), .. Tls(certs.CaPath, certs.Leaf("localhost")), "--json"]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        var root = JsonDocument.Parse(r.Out).RootElement;
        Assert.True(root.GetProperty("verification").GetProperty("ok").GetBoolean());
        Assert.True(root.GetProperty("destination").GetProperty("tls").GetBoolean());
        // The JIT compilation share of the downtime is reported (measured, so only its bounds are checked).
        var summary = root.GetProperty("summary");
        long jit = summary.GetProperty("downtime").GetProperty("jit_ns").GetInt64();
        Assert.InRange(jit, 0, summary.GetProperty("downtime_ns").GetInt64());
        var its = root.GetProperty("iterations").EnumerateArray().ToList();
        Assert.Equal(2, its.Count);
        // The pre-dump's pages crossed the (TLS) page server.
        Assert.True(its[0].GetProperty("page_bytes_on_wire").GetInt64() > 0);
        if (mode == "hybrid")
        {
            var pc = root.GetProperty("post_copy");
            long lazy = pc.GetProperty("lazy_pages").GetInt64();
            Assert.True(lazy > 0);
            Assert.Equal(lazy, pc.GetProperty("pages_by_fault").GetInt64() + pc.GetProperty("pages_by_drain").GetInt64());
        }
    }

    private static (Process Proc, int Port) StartService(string images, string machine, string[] extra)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { dll, "migrate-service", "-D", images, "--machine", machine, "--address", "127.0.0.1", "--port", "0", "--ps-timeout", "30" }.Concat(extra))
            psi.ArgumentList.Add(a);
        psi.Environment.Remove("CRIU_SHARP_MACHINE");
        var p = Process.Start(psi)!;
        var line = p.StandardOutput.ReadLineAsync();
        if (!line.Wait(60_000) || line.Result is not { } l || !l.StartsWith("listening on 127.0.0.1:", StringComparison.Ordinal))
        {
            p.Kill(true);
            throw new InvalidOperationException("migrate-service did not report its port");
        }
        return (p, int.Parse(l[(l.LastIndexOf(':') + 1)..], CultureInfo.InvariantCulture));
    }

    [Theory]
    [InlineData("rogue-service")]
    [InlineData("plain-source")]
    public void ServiceAndSourceOfDifferentCAs_AreRefused_OneLineExit7(string who)
    {
        string id = Guid.NewGuid().ToString("N");
        using var ours = new TestCerts(P("pki-ours-" + id), "criu-sharp test CA");
        using var theirs = new TestCerts(P("pki-theirs-" + id), "someone else");
        string images = P("tls-refused-" + id);
        // rogue-service: the service's certificate (and CA) are another's; plain-source: the source
        // speaks no TLS to a service that requires it.
        string[] serviceTls = who == "rogue-service" ? Tls(theirs.CaPath, theirs.Leaf("localhost")) : Tls(ours.CaPath, ours.Leaf("localhost"));
        string[] sourceTls = who == "rogue-service" ? Tls(ours.CaPath, ours.Leaf("source")) : [];
        var (svc, port) = StartService(images, images + "-machine", serviceTls);
        try
        {
            var r = CliRunner.Run(["migrate", .. _s.Args("--transport", "tcp", "--address", "127.0.0.1", "--port", port.ToString(CultureInfo.InvariantCulture), "--policy", "fixed:1"), .. sourceTls]);
            Assert.Equal(7, r.Code);
            Assert.StartsWith("criu-sharp: ", r.ErrLines[0]);
            if (who == "rogue-service")
                Assert.StartsWith("criu-sharp: TLS handshake with the destination at 127.0.0.1:", r.ErrLines[0]);
            Assert.DoesNotContain("   at ", r.Err);
            // The service refused its peer too, in one line, and restored nothing.
            Assert.True(svc.WaitForExit(30_000));
            Assert.Equal(7, svc.ExitCode);
            var err = svc.StandardError.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.StartsWith("criu-sharp: migrate-service: ", err[0]);
            if (who == "plain-source")
                Assert.Contains("TLS handshake with the source", err[0]);
            Assert.DoesNotContain(err, l => l.StartsWith("   at ", StringComparison.Ordinal));
            Assert.False(Directory.Exists(images + "-machine"));
        }
        finally
        {
            if (!svc.HasExited)
                svc.Kill(true);
            svc.Dispose();
        }
    }

    [Fact]
    public void TlsWithoutTcp_IsAUsageError_AndAMissingCertificateIsBadInput()
    {
        var r = CliRunner.Run(["migrate", .. _s.Args("--tls")]);
        Assert.Equal(2, r.Code);
        Assert.Contains("--tls need --transport tcp", r.ErrLines[0]);
        var missing = CliRunner.Run(["migrate", .. _s.Args("--transport", "tcp", "--tls", "--tls-cacert", P("absent-ca.pem"), "--tls-cert", P("absent.pem"), "--tls-key", P("absent-key.pem"))]);
        Assert.Equal(3, missing.Code);
        Assert.StartsWith("criu-sharp: cannot load the TLS certificates", missing.ErrLines[0]);
    }
}

using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using CriuSharp.Dumper.PageServer;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>CRIU's --tls options on loopback, with certificates made for the test at run time.</summary>
public class PageServerTlsTests
{
    private static readonly TimeSpan Io = TimeSpan.FromSeconds(20);

    private static X509Certificate2 NewCa(string name, out ECDsa key)
    {
        key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        return req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
    }

    /// <summary>Writes cert.pem and key.pem of a leaf signed by <paramref name="ca"/> into <paramref name="dir"/>.</summary>
    private static PageServerTls Leaf(string dir, X509Certificate2 ca, ECDsa caKey, string caPath, string cn)
    {
        Directory.CreateDirectory(dir);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest($"CN={cn}", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        san.AddDnsName(cn);
        req.CertificateExtensions.Add(san.Build());
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        req.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
        var serial = RandomNumberGenerator.GetBytes(12);
        using var cert = req.Create(ca.SubjectName, X509SignatureGenerator.CreateForECDsa(caKey),
            DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1), serial);
        string certPath = Path.Combine(dir, "cert.pem"), keyPath = Path.Combine(dir, "key.pem");
        File.WriteAllText(certPath, cert.ExportCertificatePem());
        File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem());
        return new PageServerTls { CaCert = caPath, Cert = certPath, Key = keyPath };
    }

    [Fact]
    public void TlsPageServer_RefusesAClientWithoutTheRightCertificate_AndServesOneWithIt()
    {
        string dir = RoundTrip.NewDir("ps-tls");
        using var ca = NewCa("criu-sharp test CA", out var caKey);
        using var rogueCa = NewCa("someone else", out var rogueKey);
        string caPath = Path.Combine(dir, "ca.pem"), roguePath = Path.Combine(dir, "rogue-ca.pem");
        File.WriteAllText(caPath, ca.ExportCertificatePem());
        File.WriteAllText(roguePath, rogueCa.ExportCertificatePem());
        var serverTls = Leaf(Path.Combine(dir, "server"), ca, caKey, caPath, "localhost");
        var clientTls = Leaf(Path.Combine(dir, "client"), ca, caKey, caPath, "client");
        // Signed by another CA, but trusting the right one: the server must refuse it.
        var rogueTls = Leaf(Path.Combine(dir, "rogue"), rogueCa, rogueKey, caPath, "client");

        var k = RoundTrip.NewKernel();
        var t = Procs.Rich(k, 100);
        var host = new ClockOnlyHost(k);
        using var ps = new PageServerTests.Running(new PageServerOptions { ImagesDir = Path.Combine(dir, "server-images"), Tls = serverTls, Sessions = 1 });
        try
        {
            DumpResult PreDump(string name, PageServerTls? tls) => Criu.PreDump(host.AsKernelApi(), new DumpOptions
            {
                Pid = 100, ImagesDir = Path.Combine(dir, "images-" + name),
                PageServer = new PageServerEndpoint { Address = "127.0.0.1", Port = ps.Port, Tls = tls, IoTimeout = Io },
            });
            var rogueError = Assert.Throws<PageServerException>(() => PreDump("rogue", rogueTls));
            Assert.Throws<PageServerException>(() => PreDump("plain", null));
            var ok = PreDump("good", clientTls);
            Assert.True(ok.Stats.PagesWritten > 0);
            var results = ps.Finish();
            Assert.True(results.Count == 3, rogueError.Message + " // " + string.Join(" / ", results.Select(r => $"{r.Closed} {r.Error}")));
            Assert.Contains("TLS", results[0].Error);
            Assert.False(results[1].Closed);
            Assert.True(results[2].Closed, results[2].Error);
            Assert.True(File.Exists(Path.Combine(dir, "server-images", ImageFormat.ImageNames.Pagemap(100))));
            Assert.True(t.Alive);
        }
        finally
        {
            caKey.Dispose();
            rogueKey.Dispose();
        }
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public async Task TlsLazyPageServer_RefusesADaemonWithoutTheRightCertificate_AndServesOneWithIt()
    {
        string dir = RoundTrip.NewDir("lazy-tls");
        using var ca = NewCa("criu-sharp test CA", out var caKey);
        using var rogueCa = NewCa("someone else", out var rogueKey);
        try
        {
            string caPath = Path.Combine(dir, "ca.pem");
            File.WriteAllText(caPath, ca.ExportCertificatePem());
            var serverTls = Leaf(Path.Combine(dir, "server"), ca, caKey, caPath, "localhost");
            var clientTls = Leaf(Path.Combine(dir, "client"), ca, caKey, caPath, "client");
            var rogueTls = Leaf(Path.Combine(dir, "rogue"), rogueCa, rogueKey, caPath, "client");

            var store = new LazyPageStore();
            var pages = new byte[2 * 4096];
            for (int i = 0; i < pages.Length; i++)
                pages[i] = (byte)(i * 7 + 3);
            store.Add(1000, 0x7f0000010000, pages);
            using var server = LazyPageServer.Start(store, "127.0.0.1", 0, tls: serverTls);
            var dropped = new List<string>();
            string? error = null;
            var serving = Task.Run(() => server.Serve(Io, out error, dropped.Add));
            var got = new byte[pages.Length];
            // A daemon whose certificate another CA signed, and one without TLS: refused, and the
            // source keeps waiting for a daemon it can serve.
            using (var rogue = new PageServerLazySource("127.0.0.1", server.Port, Io, tls: rogueTls))
                Assert.False(rogue.TryGet(1000, 0x7f0000010000, got));
            using (var plain = new PageServerLazySource("127.0.0.1", server.Port, Io))
                Assert.False(plain.TryGet(1000, 0x7f0000010000, got));
            Assert.Equal(0, server.PagesServed);
            using (var good = new PageServerLazySource("127.0.0.1", server.Port, Io, tls: clientTls))
            {
                Assert.Null(good.ConnectError);
                Assert.True(good.TryGet(1000, 0x7f0000010000, got));
                Assert.Equal(pages, got);
                good.Close();
            }
            Assert.True(await serving.WaitAsync(Io), error);
            Assert.Equal(2, dropped.Count);
            Assert.All(dropped, d => Assert.Contains("TLS", d));
            Assert.Equal(2, server.PagesServed);
        }
        finally
        {
            caKey.Dispose();
            rogueKey.Dispose();
            Directory.Delete(dir, recursive: true);
        }
    }
}

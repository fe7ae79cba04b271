using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace CriuSharp.Dumper.PageServer;

/// <summary>
/// CRIU's TLS options (criu/tls.c, crtools --help): <c>--tls-cacert</c> (CA to verify the peer
/// with), <c>--tls-cert</c> and <c>--tls-key</c> (PEM certificate and key of this side),
/// <c>--tls-no-cn-verify</c> (the client does not check the server's name against
/// <c>--address</c>). The defaults are CRIU's paths. Both sides present a certificate and both
/// verify the other's against the CA: a peer without a certificate the CA signed is refused.
/// </summary>
public sealed record PageServerTls
{
    public const string DefaultCaCert = "/etc/pki/CA/cacert.pem";
    public const string DefaultCert = "/etc/pki/criu/cert.pem";
    public const string DefaultKey = "/etc/pki/criu/private/key.pem";

    public string CaCert { get; init; } = DefaultCaCert;
    public string Cert { get; init; } = DefaultCert;
    public string Key { get; init; } = DefaultKey;
    public bool NoCnVerify { get; init; }
}

/// <summary>
/// The handshakes of <see cref="PageServerTls"/>, shared by the page server, the lazy page server and
/// any other connection that takes CRIU's TLS options (migrate's control connection).
/// </summary>
public static class PageServerTlsSetup
{
    private static (X509Certificate2 Own, X509Certificate2 Ca) Load(PageServerTls tls)
    {
        try
        {
            var own = X509Certificate2.CreateFromPemFile(tls.Cert, tls.Key);
            var ca = X509CertificateLoader.LoadCertificateFromFile(tls.CaCert);
            return (own, ca);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Security.Cryptography.CryptographicException)
        {
            throw new DumperException($"cannot load the TLS certificates (--tls-cert {tls.Cert}, --tls-key {tls.Key}, --tls-cacert {tls.CaCert}): {e.Message}", inner: e);
        }
    }

    /// <summary>Chain to the given CA only (not the system store), as gnutls does with CRIU's CA file.</summary>
    private static bool Verify(X509Certificate? cert, SslPolicyErrors errors, X509Certificate2 ca, bool checkName)
    {
        if (cert is null)
            return false;
        if (checkName && (errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
            return false;
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        using var c2 = new X509Certificate2(cert);
        return chain.Build(c2);
    }

    /// <summary>The client's handshake; <paramref name="peer"/> names the server in the error.</summary>
    public static Stream AuthenticateClient(Stream inner, string address, PageServerTls tls, string peer = "the page server")
    {
        var (own, ca) = Load(tls);
        var ssl = new SslStream(inner, leaveInnerStreamOpen: false,
            (_, cert, _, errors) => Verify(cert, errors, ca, !tls.NoCnVerify));
        try
        {
            ssl.AuthenticateAsClient(new SslClientAuthenticationOptions
            {
                TargetHost = address,
                ClientCertificates = [own],
                EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                LocalCertificateSelectionCallback = (_, _, _, _, _) => own,
            });
            return ssl;
        }
        catch (Exception e) when (e is AuthenticationException or IOException)
        {
            ssl.Dispose();
            throw new PageServerException($"TLS handshake with {peer} at {address} failed: {e.Message}", inner: e);
        }
    }

    public static SslStream AuthenticateServer(Stream inner, PageServerTls tls, TimeSpan timeout)
    {
        var (own, ca) = Load(tls);
        var ssl = new SslStream(inner, leaveInnerStreamOpen: false,
            (_, cert, _, errors) => Verify(cert, errors & ~SslPolicyErrors.RemoteCertificateNameMismatch, ca, checkName: false));
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
            {
                ServerCertificate = own,
                ClientCertificateRequired = true,
                EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            }, cts.Token).GetAwaiter().GetResult();
            return ssl;
        }
        catch
        {
            ssl.Dispose();
            throw;
        }
    }

    /// <summary>Loads the server's certificates once at start, so a wrong path fails before listening.</summary>
    public static void Check(PageServerTls tls) => _ = Load(tls);
}

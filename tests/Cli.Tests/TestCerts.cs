using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace CriuSharp.Cli.Tests;

/// <summary>A CA and leaf certificates (PEM files) made at run time for the --tls tests.</summary>
internal sealed class TestCerts : IDisposable
{
    private readonly ECDsa _caKey;
    private readonly X509Certificate2 _ca;

    public TestCerts(string dir, string name)
    {
        Dir = dir;
        Directory.CreateDirectory(dir);
        _caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest($"CN={name}", _caKey, HashAlgorithmName.SHA256);
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        _ca = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        CaPath = Path.Combine(dir, "ca.pem");
        File.WriteAllText(CaPath, _ca.ExportCertificatePem());
    }

    public string Dir { get; }
    public string CaPath { get; }

    /// <summary>cert.pem and key.pem of a leaf this CA signed (valid for 127.0.0.1 and <paramref name="cn"/>), in a subdirectory.</summary>
    public (string Cert, string Key) Leaf(string cn)
    {
        string dir = Path.Combine(Dir, cn);
        Directory.CreateDirectory(dir);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest($"CN={cn}", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(IPAddress.Loopback);
        san.AddDnsName(cn);
        req.CertificateExtensions.Add(san.Build());
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        req.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
        using var cert = req.Create(_ca.SubjectName, X509SignatureGenerator.CreateForECDsa(_caKey),
            DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1), RandomNumberGenerator.GetBytes(12));
        string certPath = Path.Combine(dir, "cert.pem"), keyPath = Path.Combine(dir, "key.pem");
        File.WriteAllText(certPath, cert.ExportCertificatePem());
        File.WriteAllText(keyPath, key.ExportPkcs8PrivateKeyPem());
        return (certPath, keyPath);
    }

    public void Dispose()
    {
        _ca.Dispose();
        _caKey.Dispose();
    }
}

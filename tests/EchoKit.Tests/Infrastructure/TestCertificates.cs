using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace EchoKit.Tests.Infrastructure;

/// <summary>
/// A throwaway PKI in a temporary folder, made with .NET's CertificateRequest: a CA, a server certificate for
/// localhost/127.0.0.1/::1 signed by it, a client certificate, a client certificate from another CA, an expired
/// server certificate, a second server certificate (for rotation), and a server key that belongs to no certificate.
/// Every file is PEM; <see cref="Path(string)"/> names it. Deleted on dispose.
/// </summary>
public sealed class TestCertificates : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("echokit-tls-");

    public TestCertificates()
    {
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var ca = MakeCa("EchoKit test CA", caKey);
        WritePem("ca.pem", ca, null);
        using var otherKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        using var other = MakeCa("Some other CA", otherKey);
        WritePem("other-ca.pem", other, null);

        var now = DateTimeOffset.UtcNow;
        Issue("server", "CN=localhost", ca, caKey, serverAuth: true, now.AddHours(-1), now.AddDays(30));
        Issue("server2", "CN=localhost rotated", ca, caKey, serverAuth: true, now.AddHours(-1), now.AddDays(30));
        Issue("expired", "CN=localhost expired", ca, caKey, serverAuth: true, now.AddDays(-30), now.AddDays(-1));
        Issue("client", "CN=alice, O=EchoKit tests", ca, caKey, serverAuth: false, now.AddHours(-1), now.AddDays(30));
        Issue("stranger", "CN=mallory", other, otherKey, serverAuth: false, now.AddHours(-1), now.AddDays(30));
        using var loose = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        File.WriteAllText(Path("unrelated.key"), loose.ExportPkcs8PrivateKeyPem());
    }

    public string Path(string name) => System.IO.Path.Combine(_dir.FullName, name);

    /// <summary>The SHA-256 fingerprint of a certificate file, as echokit logs it (AB:CD:…).</summary>
    public string Fingerprint(string name)
    {
        using var certificate = X509Certificate2.CreateFromPem(File.ReadAllText(Path(name)));
        return Convert.ToHexString(certificate.GetCertHash(HashAlgorithmName.SHA256)).Chunk(2).Select(p => new string(p)).Aggregate((a, b) => a + ":" + b);
    }

    public void Dispose() => _dir.Delete(recursive: true);

    private static X509Certificate2 MakeCa(string name, ECDsa key)
    {
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        var now = DateTimeOffset.UtcNow;
        return request.CreateSelfSigned(now.AddDays(-60), now.AddYears(1));
    }

    private void Issue(string name, string subject, X509Certificate2 ca, ECDsa caKey, bool serverAuth, DateTimeOffset from, DateTimeOffset until)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        if (serverAuth)
        {
            var san = new SubjectAlternativeNameBuilder();
            san.AddDnsName("localhost");
            san.AddIpAddress(IPAddress.Loopback);
            san.AddIpAddress(IPAddress.IPv6Loopback);
            request.CertificateExtensions.Add(san.Build());
        }

        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid(serverAuth ? "1.3.6.1.5.5.7.3.1" : "1.3.6.1.5.5.7.3.2")], false));
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, true, false));
        var serial = RandomNumberGenerator.GetBytes(12);
        serial[0] &= 0x7F;
        using var signed = request.Create(ca.SubjectName, X509SignatureGenerator.CreateForECDsa(caKey), from, until, serial);
        WritePem(name + ".pem", signed, null);
        File.WriteAllText(Path(name + ".key"), key.ExportPkcs8PrivateKeyPem());
    }

    private void WritePem(string file, X509Certificate2 certificate, string? extra) =>
        File.WriteAllText(Path(file), certificate.ExportCertificatePem() + "\n" + extra);
}

using System.Net;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace EchoKit.Internal.Tls;

/// <summary>
/// Where the server's certificate comes from, and loading it into the one <see cref="SslStreamCertificateContext"/>
/// every handshake shares (built once: it holds the chain, and on Linux it is what enables session resumption).
/// Every way a user can get it wrong is one sentence naming the file and what is wrong with it: a file that
/// cannot be read, no certificate in it, no key, a key that is not the certificate's, a wrong PKCS#12
/// password, a certificate outside its validity dates.
/// </summary>
internal sealed class ServerCertificate
{
    private ServerCertificate(string? certificatePath, string? keyPath, string? passwordPath, IReadOnlyList<string> selfSignedNames)
    {
        CertificatePath = certificatePath;
        KeyPath = keyPath;
        PasswordPath = passwordPath;
        SelfSignedNames = selfSignedNames;
    }

    public string? CertificatePath { get; }

    public string? KeyPath { get; }

    public string? PasswordPath { get; }

    /// <summary>Names of a throwaway certificate made at start (none: the certificate comes from files).</summary>
    public IReadOnlyList<string> SelfSignedNames { get; }

    public bool IsSelfSigned => CertificatePath is null;

    /// <summary>PEM certificate (with any intermediates after it) and key; or PKCS#12 with the key inside and its password in a file.</summary>
    public static ServerCertificate FromFiles(string certificatePath, string? keyPath, string? passwordPath) =>
        new(certificatePath, keyPath, passwordPath, []);

    /// <summary>A certificate made at start for <paramref name="names"/> (host names and addresses).</summary>
    public static ServerCertificate SelfSigned(IReadOnlyList<string> names) => new(null, null, null, names);

    /// <summary>
    /// Loads (or makes) the certificate; <see cref="TlsConfigurationException"/> says what is wrong. With
    /// <paramref name="clientTrust"/>, the handshake names those CAs to the client (so it can pick its certificate).
    /// </summary>
    public (SslStreamCertificateContext Context, X509Certificate2 Leaf) Load(X509Certificate2Collection? clientTrust)
    {
        var (leaf, chain) = IsSelfSigned ? (MakeSelfSigned(SelfSignedNames), new X509Certificate2Collection()) : LoadFiles();
        var now = DateTime.UtcNow;
        if (now > leaf.NotAfter.ToUniversalTime())
        {
            throw new TlsConfigurationException($"the certificate in {CertificatePath} expired on {leaf.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm} UTC (valid from {leaf.NotBefore.ToUniversalTime():yyyy-MM-dd HH:mm} UTC)");
        }

        if (now < leaf.NotBefore.ToUniversalTime())
        {
            throw new TlsConfigurationException($"the certificate in {CertificatePath} is not valid before {leaf.NotBefore.ToUniversalTime():yyyy-MM-dd HH:mm} UTC (until {leaf.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm} UTC)");
        }

        var trust = clientTrust is null ? null : SslCertificateTrust.CreateForX509Collection(clientTrust, sendTrustInHandshake: true);
        return (SslStreamCertificateContext.Create(leaf, chain, offline: true, trust), leaf);
    }

    private (X509Certificate2 Leaf, X509Certificate2Collection Chain) LoadFiles()
    {
        string certificatePath = CertificatePath!;
        byte[] raw = ReadFile(certificatePath, "certificate");
        bool pem = raw.AsSpan().IndexOf("-----BEGIN"u8) >= 0;
        if (!pem)
        {
            string? password = PasswordPath is null ? null : System.Text.Encoding.UTF8.GetString(ReadFile(PasswordPath, "password")).TrimEnd('\r', '\n');
            try
            {
                var all = X509CertificateLoader.LoadPkcs12CollectionFromFile(certificatePath, password, X509KeyStorageFlags.EphemeralKeySet);
                var leaf = all.FirstOrDefault(c => c.HasPrivateKey)
                    ?? throw new TlsConfigurationException($"{certificatePath} holds no private key (a PKCS#12 file needs the key inside; a PEM certificate needs --tls-key)");
                var chain = new X509Certificate2Collection(all.Where(c => !ReferenceEquals(c, leaf)).ToArray());
                return (leaf, chain);
            }
            catch (CryptographicException e)
            {
                throw new TlsConfigurationException(PasswordPath is null
                    ? $"{certificatePath} is neither PEM nor a PKCS#12 file without a password ({e.Message}); a PKCS#12 file with a password needs --tls-password-file"
                    : $"{certificatePath} could not be opened as PKCS#12 with the password in {PasswordPath}: {e.Message}");
            }
        }

        var certificates = new X509Certificate2Collection();
        try
        {
            certificates.ImportFromPem(System.Text.Encoding.ASCII.GetString(raw));
        }
        catch (CryptographicException e)
        {
            throw new TlsConfigurationException($"{certificatePath} holds no readable PEM certificate: {e.Message}");
        }

        if (certificates.Count == 0)
        {
            throw new TlsConfigurationException($"{certificatePath} holds no certificate (expected -----BEGIN CERTIFICATE-----)");
        }

        string keyPath = KeyPath ?? certificatePath; // a PEM file may hold the key too
        string keyText = System.Text.Encoding.ASCII.GetString(keyPath == certificatePath ? raw : ReadFile(keyPath, "key"));
        if (!keyText.Contains("PRIVATE KEY-----", StringComparison.Ordinal))
        {
            throw new TlsConfigurationException(KeyPath is null
                ? $"{certificatePath} holds no private key: give it with --tls-key"
                : $"{keyPath} holds no private key (expected -----BEGIN PRIVATE KEY----- or an RSA/EC PRIVATE KEY)");
        }

        var first = certificates[0];
        bool ec = first.GetKeyAlgorithm() == "1.2.840.10045.2.1"; // id-ecPublicKey; otherwise RSA
        using AsymmetricAlgorithm key = ec ? ECDsa.Create() : RSA.Create();
        try
        {
            key.ImportFromPem(keyText);
        }
        catch (Exception e) when (e is ArgumentException or CryptographicException)
        {
            throw new TlsConfigurationException($"the key in {keyPath} is not the key of the certificate in {certificatePath} (the certificate has an {(ec ? "EC" : "RSA")} key: {e.Message})");
        }

        if (!key.ExportSubjectPublicKeyInfo().AsSpan().SequenceEqual(first.PublicKey.ExportSubjectPublicKeyInfo()))
        {
            throw new TlsConfigurationException($"the key in {keyPath} is not the key of the certificate in {certificatePath}");
        }

        var withKey = key is ECDsa ecKey ? first.CopyWithPrivateKey(ecKey) : first.CopyWithPrivateKey((RSA)key);
        // On Linux a key imported this way works for TLS as it is; the rest of the file is the chain.
        return (withKey, new X509Certificate2Collection(certificates.Skip(1).ToArray()));
    }

    private static byte[] ReadFile(string path, string what)
    {
        try
        {
            return File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            string why = EchoKit.Internal.FileErrorText.Describe(e);
            throw new TlsConfigurationException($"cannot read the {what} file {path}: {why}");
        }
    }

    /// <summary>An ECDSA P-256 certificate for <paramref name="names"/>, valid from an hour ago for 30 days.</summary>
    private static X509Certificate2 MakeSelfSigned(IReadOnlyList<string> names)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={names.FirstOrDefault() ?? "localhost"}, O=EchoKit self-signed", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        foreach (string name in names)
        {
            if (IPAddress.TryParse(name, out var address))
            {
                san.AddIpAddress(address);
            }
            else
            {
                san.AddDnsName(name);
            }
        }

        request.CertificateExtensions.Add(san.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false)); // serverAuth
        var now = DateTimeOffset.UtcNow;
        return request.CreateSelfSigned(now.AddHours(-1), now.AddDays(30));
    }

}

/// <summary>A TLS setting that cannot work, in one sentence for the user.</summary>
internal sealed class TlsConfigurationException(string message) : Exception(message);

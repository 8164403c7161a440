using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace EchoKit.Client;

/// <summary>How a client checks the server's certificate, and what it presents itself.</summary>
internal sealed record TlsClientOptions
{
    /// <summary>The name sent as SNI and checked against the certificate (null: the host connected to).</summary>
    public string? ServerName { get; init; }

    /// <summary>Trust only the CAs in these certificates instead of the system's store.</summary>
    public X509Certificate2Collection? Authorities { get; init; }

    /// <summary>Accept exactly the certificate with this SHA-256 fingerprint (hex, colons optional), whoever issued it.</summary>
    public string? Pin { get; init; }

    /// <summary>Check nothing (said on stderr by the caller).</summary>
    public bool Insecure { get; init; }

    /// <summary>A certificate with its key, for servers that ask for one (mutual TLS).</summary>
    public X509Certificate2? ClientCertificate { get; init; }
}

/// <summary>The server's certificate was not accepted, or the handshake failed: the message says why.</summary>
internal sealed class TlsHandshakeException(string message) : Exception(message);

/// <summary>
/// The client side of TLS: a handshake over a connected socket that verifies the server by default (the system
/// trust store, or --tls-ca, or a pinned fingerprint) and, when it refuses, says why in the words a user can act
/// on: unknown issuer, name mismatch, expired. It never carries on after a failed check.
/// </summary>
internal static class TlsConnector
{
    public static async Task<SslStream> AuthenticateAsync(Socket socket, string host, TlsClientOptions options, TimeSpan timeout)
    {
        string name = options.ServerName ?? host;
        string? refusal = null;
        var tls = new SslStream(new NetworkStream(socket, ownsSocket: false), leaveInnerStreamOpen: false);
        var settings = new SslClientAuthenticationOptions
        {
            TargetHost = name,
            EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
            CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
            ClientCertificates = options.ClientCertificate is { } mine ? [mine] : null,
            RemoteCertificateValidationCallback = (_, certificate, _, errors) => Check(certificate, errors, name, options, out refusal),
        };
        using var deadline = new CancellationTokenSource(timeout);
        try
        {
            await tls.AuthenticateAsClientAsync(settings, deadline.Token).ConfigureAwait(false);
            return tls;
        }
        catch (Exception e) when (e is AuthenticationException or IOException or OperationCanceledException)
        {
            await tls.DisposeAsync().ConfigureAwait(false);
            throw new TlsHandshakeException(refusal ?? (e is OperationCanceledException
                ? $"the TLS handshake did not finish within {Durations.Format(timeout)}"
                : $"TLS handshake failed: {Internal.Tls.TlsText.Innermost(e)}"));
        }
    }

    private static bool Check(X509Certificate? presented, SslPolicyErrors errors, string name, TlsClientOptions options, out string? refusal)
    {
        refusal = null;
        if (options.Insecure)
        {
            return true;
        }

        if (presented is null)
        {
            refusal = "the server sent no certificate";
            return false;
        }

        using var certificate = new X509Certificate2(presented);
        if (options.Pin is { } pin)
        {
            string fingerprint = Internal.Tls.TlsText.Fingerprint(certificate);
            if (string.Equals(fingerprint.Replace(":", "", StringComparison.Ordinal), pin.Replace(":", "", StringComparison.Ordinal), StringComparison.OrdinalIgnoreCase))
            {
                return true;
            }

            refusal = $"the server's certificate \"{certificate.Subject}\" has sha256 {fingerprint}, not the pinned {pin}";
            return false;
        }

        var problems = new List<string>();
        if ((errors & SslPolicyErrors.RemoteCertificateNameMismatch) != 0)
        {
            var san = certificate.Extensions.OfType<X509SubjectAlternativeNameExtension>().FirstOrDefault();
            var names = san is null ? [] : san.EnumerateDnsNames().Concat(san.EnumerateIPAddresses().Select(a => a.ToString())).ToArray();
            problems.Add($"name mismatch: the certificate is for {(names.Length > 0 ? string.Join(", ", names) : certificate.Subject)}, not {name} (--tls-sni names another)");
        }

        var now = DateTime.Now;
        if (now > certificate.NotAfter)
        {
            problems.Add($"expired on {certificate.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm} UTC");
        }
        else if (now < certificate.NotBefore)
        {
            problems.Add($"not valid before {certificate.NotBefore.ToUniversalTime():yyyy-MM-dd HH:mm} UTC");
        }

        if ((errors & SslPolicyErrors.RemoteCertificateChainErrors) != 0 || options.Authorities is not null)
        {
            using var chain = new X509Chain();
            chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
            chain.ChainPolicy.VerificationFlags = X509VerificationFlags.IgnoreNotTimeValid; // said above, once
            if (options.Authorities is { } authorities)
            {
                chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                chain.ChainPolicy.CustomTrustStore.AddRange(authorities);
            }

            if (!chain.Build(certificate))
            {
                problems.Add($"unknown issuer: \"{certificate.Issuer}\" is not a CA this client trusts ({(options.Authorities is null ? "the system store" : "--tls-ca")}; give --tls-ca FILE, or --tls-pin the fingerprint {Internal.Tls.TlsText.Fingerprint(certificate)})");
            }
        }
        else if ((errors & SslPolicyErrors.RemoteCertificateNotAvailable) != 0)
        {
            problems.Add("no certificate");
        }

        if (problems.Count == 0)
        {
            return true;
        }

        refusal = $"the server's certificate \"{certificate.Subject}\" was not accepted: {string.Join("; ", problems)}";
        return false;
    }
}

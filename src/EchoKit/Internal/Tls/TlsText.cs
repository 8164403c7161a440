using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace EchoKit.Internal.Tls;

/// <summary>TLS facts as both sides print them: the protocol as openssl names it, fingerprints, the cause of a failure.</summary>
internal static class TlsText
{
    /// <summary>"TLSv1.3", "TLSv1.2".</summary>
    public static string Protocol(SslProtocols protocol) => protocol switch
    {
        SslProtocols.Tls13 => "TLSv1.3",
        SslProtocols.Tls12 => "TLSv1.2",
        _ => protocol.ToString(),
    };

    /// <summary>"AB:CD:…", the SHA-256 fingerprint as openssl x509 -fingerprint -sha256 prints it.</summary>
    public static string Fingerprint(X509Certificate certificate) =>
        string.Join(':', Convert.ToHexString(certificate.GetCertHash(HashAlgorithmName.SHA256)).Chunk(2).Select(pair => new string(pair)));

    /// <summary>The message of the innermost exception: the cause, not the wrapper's "see inner exception".</summary>
    public static string Innermost(Exception e)
    {
        while (e.InnerException is { } inner)
        {
            e = inner;
        }

        return e.Message;
    }
}

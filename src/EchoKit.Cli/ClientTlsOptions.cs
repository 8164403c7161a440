using System.CommandLine;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using EchoKit.Client;
using EchoKit.Internal.Tls;

namespace EchoKit.Cli;

/// <summary>The TLS flags of <c>echokit connect</c> (and bench): verify by default, say so when told not to.</summary>
internal sealed class ClientTlsOptions
{
    private readonly Option<bool> _tls = new("--tls") { Description = "Speak TLS 1.2/1.3; the server's certificate is verified (system store, --tls-ca or --tls-pin)" };
    private readonly Option<string?> _ca = new("--tls-ca") { Description = "Trust only the CAs in this PEM file (instead of the system's store)", HelpName = "file" };
    private readonly Option<string?> _pin = new("--tls-pin") { Description = "Accept exactly the certificate with this SHA-256 fingerprint (AB:CD:… or hex), whoever issued it", HelpName = "sha256" };
    private readonly Option<string?> _sni = new("--tls-sni") { Description = "The server name to send (SNI) and check [default: the host]", HelpName = "name" };
    private readonly Option<string?> _certificate = new("--tls-cert") { Description = "A client certificate (PEM) for servers that ask for one (mutual TLS)", HelpName = "file" };
    private readonly Option<string?> _key = new("--tls-key") { Description = "The PEM key of --tls-cert (if not in the same file)", HelpName = "file" };
    private readonly Option<bool> _insecure = new("--tls-insecure") { Description = "Do not verify the server's certificate (said on stderr): anyone on the path can read and change the connection" };

    public IEnumerable<Option> All => [_tls, _ca, _pin, _sni, _certificate, _key, _insecure];

    /// <summary>The TLS options asked for (null: plaintext), a usage error, or a file that cannot be read.</summary>
    public (TlsClientOptions? Options, string? UsageError, string? Error) Read(ParseResult result)
    {
        string? ca = result.GetValue(_ca), pin = result.GetValue(_pin), certificate = result.GetValue(_certificate), key = result.GetValue(_key);
        bool insecure = result.GetValue(_insecure);
        if (!result.GetValue(_tls))
        {
            bool any = ca is not null || pin is not null || result.GetValue(_sni) is not null || certificate is not null || key is not null || insecure;
            return (null, any ? "the --tls-* options need --tls" : null, null);
        }

        if (insecure && (ca is not null || pin is not null))
        {
            return (null, "--tls-insecure checks nothing: leave out --tls-ca and --tls-pin, or --tls-insecure", null);
        }

        if (ca is not null && pin is not null)
        {
            return (null, "--tls-ca and --tls-pin are two ways to trust a server: give one", null);
        }

        if (pin is not null && Convert.FromHexString(pin.Replace(":", "", StringComparison.Ordinal) is var hex && hex.Length == 64 && hex.All(Uri.IsHexDigit) ? hex : "00").Length != 32)
        {
            return (null, $"invalid --tls-pin value '{pin}': expected a SHA-256 fingerprint, 64 hex digits (colons allowed), as `openssl x509 -fingerprint -sha256` prints it", null);
        }

        if (key is not null && certificate is null)
        {
            return (null, "--tls-key goes with --tls-cert", null);
        }

        X509Certificate2Collection? authorities = null;
        X509Certificate2? mine = null;
        string what = "the CA file " + ca;
        try
        {
            if (ca is not null)
            {
                authorities = [];
                authorities.ImportFromPemFile(ca);
                if (authorities.Count == 0)
                {
                    return (null, null, $"{ca} holds no certificate (expected -----BEGIN CERTIFICATE-----)");
                }
            }

            if (certificate is not null)
            {
                what = $"the client certificate {certificate}{(key is null ? "" : " with the key " + key)}";
                mine = X509Certificate2.CreateFromPemFile(certificate, key);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CryptographicException or ArgumentException)
        {
            string why = EchoKit.Internal.FileErrorText.Describe(e);
            return (null, null, $"cannot use {what}: {why}");
        }

        return (new TlsClientOptions { Authorities = authorities, Pin = pin, ServerName = result.GetValue(_sni), Insecure = insecure, ClientCertificate = mine }, null, null);
    }

    /// <summary>"echokit: TLS: TLSv1.3 TLS_AES_256_GCM_SHA384, server certificate "CN=…" sha256 …".</summary>
    public static string Describe(SslStream tls)
    {
        string server = tls.RemoteCertificate is { } presented
            ? $", server certificate \"{presented.Subject}\" sha256 {TlsText.Fingerprint(presented)}"
            : "";
        return $"echokit: TLS: {TlsText.Protocol(tls.SslProtocol)} {tls.NegotiatedCipherSuite}{server}";
    }
}

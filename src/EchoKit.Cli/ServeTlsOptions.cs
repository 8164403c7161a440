using System.CommandLine;
using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using EchoKit.Internal.Tls;

namespace EchoKit.Cli;

/// <summary><c>echokit serve</c>'s TLS flags: what they are, which go together, and the settings they make.</summary>
internal sealed class ServeTlsOptions
{
    private readonly Option<string?> _certificate = new("--tls-cert") { Description = "Serve TLS 1.2/1.3 with this certificate: PEM (intermediates after it; the key too, or --tls-key) or PKCS#12", HelpName = "file" };
    private readonly Option<string?> _key = new("--tls-key") { Description = "The PEM private key of --tls-cert", HelpName = "file" };
    private readonly Option<string?> _password = new("--tls-password-file") { Description = "The password of a PKCS#12 --tls-cert, in a file (its first line)", HelpName = "file" };
    private readonly Option<bool> _selfSigned = new("--tls-self-signed") { Description = "Serve TLS with a throwaway certificate for localhost and the bind addresses, made at start (its SHA-256 fingerprint is logged, for --tls-pin)" };
    private readonly Option<int?> _port = new("--tls-port")
    {
        Description = "Serve TLS on this port, beside plaintext on --port [default: TLS on --port itself]",
        HelpName = "port",
        CustomParser = r => CliOptions.ParseInteger(r, "--tls-port", 0, 65535),
    };

    private readonly Option<string?> _clientCa = new("--tls-client-ca") { Description = "Ask clients for a certificate issued by a CA in this PEM file (mutual TLS)", HelpName = "file" };
    private readonly Option<ClientAuthentication?> _clientAuth = new("--tls-client-auth")
    {
        Description = "none, optional (checked when given) or require [default: require with --tls-client-ca]",
        HelpName = "mode",
    };

    private readonly DurationOption _handshakeTimeout = CliOptions.Duration("--tls-handshake-timeout", "Close a connection whose TLS handshake has not finished after this long", "10s", allowZero: false);
    private readonly Option<int> _maxHandshakes = CliOptions.Integer("--tls-max-handshakes", "TLS handshakes in progress at once; more are refused at once", 256, 1, 1_000_000);

    public IEnumerable<Option> All =>
        [_certificate, _key, _password, _selfSigned, _port, _clientCa, _clientAuth, _handshakeTimeout.Option, _maxHandshakes];

    /// <summary>
    /// The TLS settings the command line asks for (null: no TLS), or the usage error. <paramref name="names"/>:
    /// the names a self-signed certificate is for.
    /// </summary>
    public (TlsSettings? Settings, string? UsageError, string? Error) Read(ParseResult result, bool tcp, bool unix, IReadOnlyList<string> names)
    {
        string? certificate = result.GetValue(_certificate);
        bool selfSigned = result.GetValue(_selfSigned);
        bool anyOther = result.GetValue(_key) is not null || result.GetValue(_password) is not null || result.GetValue(_port) is not null
            || result.GetValue(_clientCa) is not null || result.GetValue(_clientAuth) is not null
            || result.GetValue(_handshakeTimeout.Option) is not null;
        if (certificate is null && !selfSigned)
        {
            return (null, anyOther ? "the --tls-* options need --tls-cert FILE (or --tls-self-signed)" : null, null);
        }

        if (certificate is not null && selfSigned)
        {
            return (null, "--tls-cert and --tls-self-signed cannot be combined: serve one certificate", null);
        }

        if (selfSigned && (result.GetValue(_key) is not null || result.GetValue(_password) is not null))
        {
            return (null, "--tls-key and --tls-password-file go with --tls-cert, not --tls-self-signed", null);
        }

        if (!tcp)
        {
            return (null, "TLS is for stream connections: leave out --udp, or add --tcp", null);
        }

        if (unix && result.GetValue(_port) is not null)
        {
            return (null, "--tls-port with --unix: a socket file has no port (TLS is served on the socket file itself)", null);
        }

        string? clientCa = result.GetValue(_clientCa);
        var mode = result.GetValue(_clientAuth) ?? (clientCa is null ? ClientAuthentication.None : ClientAuthentication.Require);
        if (mode != ClientAuthentication.None && clientCa is null)
        {
            return (null, $"--tls-client-auth {mode.ToString().ToLowerInvariant()} needs --tls-client-ca FILE (the CAs client certificates must chain to)", null);
        }

        X509Certificate2Collection? authorities = null;
        if (clientCa is not null)
        {
            authorities = new X509Certificate2Collection();
            try
            {
                authorities.ImportFromPemFile(clientCa);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or CryptographicException)
            {
                string why = EchoKit.Internal.FileErrorText.Describe(e);
                return (null, null, $"cannot read the client CA file {clientCa}: {why}");
            }

            if (authorities.Count == 0)
            {
                return (null, null, $"{clientCa} holds no certificate (expected -----BEGIN CERTIFICATE-----)");
            }
        }

        var source = selfSigned ? ServerCertificate.SelfSigned(names) : ServerCertificate.FromFiles(certificate!, result.GetValue(_key), result.GetValue(_password));
        return (new TlsSettings
        {
            Certificate = source,
            ClientCertificateAuthorities = authorities,
            ClientAuth = mode,
            HandshakeTimeout = _handshakeTimeout.Get(result)!.Value,
            MaxHandshakes = result.GetValue(_maxHandshakes),
            Port = result.GetValue(_port),
        }, null, null);
    }

    /// <summary>The names a self-signed certificate covers: localhost, and the addresses served (loopback for "any").</summary>
    public static IReadOnlyList<string> SelfSignedNames(IReadOnlyList<IPAddress> bound)
    {
        var names = new List<string> { "localhost" };
        var addresses = bound.Count == 0 || bound.Any(a => a.Equals(IPAddress.Any) || a.Equals(IPAddress.IPv6Any))
            ? [IPAddress.Loopback, IPAddress.IPv6Loopback, .. bound.Where(a => !a.Equals(IPAddress.Any) && !a.Equals(IPAddress.IPv6Any))]
            : bound;
        names.AddRange(addresses.Select(a => a.ToString()).Distinct());
        return names;
    }
}

using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using EchoKit.Internal.Sockets;
using EchoKit.Internal.Stages;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal.Tls;

/// <summary>
/// TLS as a stream stage: the connection's bytes are read through an <see cref="SslStream"/> (TLS 1.2 and 1.3,
/// never older) over the socket's stream, with one <see cref="SslStreamCertificateContext"/> shared by every
/// handshake and swapped whole by <see cref="Reload"/> (SIGHUP): established connections keep theirs. Before
/// the handshake the first bytes are looked at: a TLS client starts with a handshake record (0x16), so a
/// plaintext client is refused with what it sent ("not TLS: first bytes look like …"), not with a TLS alert it
/// cannot read. At most <see cref="TlsSettings.MaxHandshakes"/> handshakes run at once (a slowloris on the
/// handshake holds a slot for at most the handshake timeout, and the rest are refused at once). A client
/// certificate is checked against the client CAs only (never the system store); its subject and SHA-256
/// fingerprint go on the connection's "tls" log line.
/// </summary>
internal sealed class TlsStage : IStreamStage
{
    private const byte HandshakeRecord = 0x16;

    private volatile TlsSettings _settings; // the certificate and client CAs are replaced by a reload
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _handshakes;
    private volatile SslStreamCertificateContext _context;

    private readonly Action<TimeSpan, string?, string?>? _handshakeDone;

    /// <param name="handshakeDone">Each handshake's duration, with its protocol (null: failed) and why it failed.</param>
    public TlsStage(TlsSettings settings, ILogger logger, Action<TimeSpan, string?, string?>? handshakeDone = null)
    {
        _settings = settings;
        _logger = logger;
        _handshakeDone = handshakeDone;
        _handshakes = new SemaphoreSlim(settings.MaxHandshakes);
        (_context, Leaf) = settings.Certificate.Load(settings.ClientCertificateAuthorities);
    }

    /// <summary>The certificate new handshakes present.</summary>
    public X509Certificate2 Leaf { get; private set; }

    public TimeSpan Timeout => _settings.HandshakeTimeout;

    public string Name => "tls";

    public StageVerdict OnAccepted(ConnectionContext connection) => StageVerdict.Continue;

    /// <summary>
    /// Loads the certificate again (files rotated), or the one <paramref name="next"/> names (with its client CAs);
    /// on failure the old one stays and the exception says why. A self-signed certificate is kept: a new one would
    /// break every client that pinned it.
    /// </summary>
    public void Reload(TlsSettings? next = null)
    {
        var settings = next is null ? _settings : _settings with { Certificate = next.Certificate, ClientCertificateAuthorities = next.ClientCertificateAuthorities };
        if (settings.Certificate.IsSelfSigned)
        {
            return;
        }

        var (context, leaf) = settings.Certificate.Load(settings.ClientCertificateAuthorities);
        _settings = settings;
        _context = context;
        Leaf = leaf;
    }

    public async ValueTask<Stream> WrapAsync(Stream transport, ConnectionContext connection, CancellationToken cancellationToken)
    {
        if (!_handshakes.Wait(0))
        {
            throw new IOException($"{_settings.MaxHandshakes} TLS handshakes already in progress (--tls-max-handshakes)");
        }

        try
        {
            var first = new byte[16];
            int n = await transport.ReadAsync(first, cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                throw new IOException("closed before the TLS handshake");
            }

            if (first[0] != HandshakeRecord)
            {
                throw new IOException($"not TLS: first bytes look like \"{Printable(first.AsSpan(0, n))}\"");
            }

            string? refusal = null;
            var ssl = new SslStream(new PrefixedStream(first[..n], transport), leaveInnerStreamOpen: false);
            var options = new SslServerAuthenticationOptions
            {
                ServerCertificateContext = _context,
                EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                AllowRenegotiation = false, // a TLS 1.2 client asking to renegotiate again and again costs us handshakes
                ClientCertificateRequired = _settings.ClientAuth != ClientAuthentication.None,
                CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                RemoteCertificateValidationCallback = (_, certificate, _, _) => CheckClient(certificate, out refusal),
            };
            long started = System.Diagnostics.Stopwatch.GetTimestamp();
            try
            {
                await ssl.AuthenticateAsServerAsync(options, cancellationToken).ConfigureAwait(false);
            }
            catch (AuthenticationException e)
            {
                _handshakeDone?.Invoke(System.Diagnostics.Stopwatch.GetElapsedTime(started), null, refusal is null ? "handshake_failed" : "client_certificate");
                await ssl.DisposeAsync().ConfigureAwait(false);
                throw new IOException(refusal ?? $"TLS handshake failed: {TlsText.Innermost(e)}");
            }
            catch (Exception e)
            {
                _handshakeDone?.Invoke(System.Diagnostics.Stopwatch.GetElapsedTime(started), null, e is OperationCanceledException ? "timeout" : "closed");
                await ssl.DisposeAsync().ConfigureAwait(false);
                throw;
            }

            _handshakeDone?.Invoke(System.Diagnostics.Stopwatch.GetElapsedTime(started), TlsText.Protocol(ssl.SslProtocol), null);

            string client = ssl.RemoteCertificate is { } presented
                ? $", client certificate \"{presented.Subject}\" sha256 {TlsText.Fingerprint(presented)}"
                : "";
            Log.TlsEstablished(_logger, connection.Id, TlsText.Protocol(ssl.SslProtocol), ssl.NegotiatedCipherSuite.ToString(), client);
            return ssl;
        }
        finally
        {
            _handshakes.Release();
        }
    }

    /// <summary>The client's certificate against the client CAs: the reason to refuse it, or null to go on.</summary>
    private bool CheckClient(X509Certificate? certificate, out string? refusal)
    {
        refusal = null;
        if (certificate is null)
        {
            if (_settings.ClientAuth == ClientAuthentication.Require)
            {
                refusal = "no client certificate (--tls-client-auth require)";
                return false;
            }

            return true;
        }

        if (_settings.ClientAuth == ClientAuthentication.None)
        {
            return true;
        }

        using var presented = new X509Certificate2(certificate);
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(_settings.ClientCertificateAuthorities ?? []);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        chain.ChainPolicy.ApplicationPolicy.Add(new System.Security.Cryptography.Oid("1.3.6.1.5.5.7.3.2")); // clientAuth
        if (chain.Build(presented))
        {
            return true;
        }

        string why = string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).Distinct());
        refusal = $"client certificate \"{presented.Subject}\" not trusted: {(why.Length > 0 ? why : "not issued by a --tls-client-ca")}";
        return false;
    }

    private static string Printable(ReadOnlySpan<byte> bytes) => PrintableBytes.Of(bytes);
}

/// <summary>Whether the server asks for a client certificate, and whether it must come.</summary>
internal enum ClientAuthentication
{
    None,
    Optional,
    Require,
}

/// <summary>What the TLS stage needs: the certificate, client authentication, and its limits.</summary>
internal sealed record TlsSettings
{
    public required ServerCertificate Certificate { get; init; }

    /// <summary>The CAs a client certificate must chain to; null: none configured.</summary>
    public X509Certificate2Collection? ClientCertificateAuthorities { get; init; }

    public ClientAuthentication ClientAuth { get; init; } = ClientAuthentication.None;

    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(10);

    public int MaxHandshakes { get; init; } = 256;

    /// <summary>The TLS port beside the plaintext one; null: the stream listeners speak TLS themselves.</summary>
    public int? Port { get; init; }
}

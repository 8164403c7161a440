using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// <c>echokit serve --tls-*</c> against the TLS clients people use (openssl s_client, socat, ncat, gnutls-cli) and
/// against a .NET client where bytes must be counted: mutual TLS, a plaintext client on the TLS port, a stalled
/// handshake, bad files, rotation on SIGHUP, close_notify at the end and at the drain.
/// </summary>
[Collection(nameof(ReliabilityTests))] // 256 MiB through TLS: measured alone, not beside the suite's floods
public sealed class TlsServeTests : IDisposable
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);
    private readonly TestCertificates _pki = new();

    public void Dispose() => _pki.Dispose();

    private string[] ServerTls => ["--tls-cert", _pki.Path("server.pem"), "--tls-key", _pki.Path("server.key")];

    private static string Greeting => Encoding.UTF8.GetString(GreetingBytes);

    private static string Port(int port) => port.ToString(CultureInfo.InvariantCulture);

    /// <summary>Runs a client program, writes <paramref name="send"/> to it, waits for greeting and echo on its stdout, then ends its input.</summary>
    private static async Task<string> TalkAsync(string program, byte[] send, params string[] args)
    {
        await using var client = ChildProcess.StartProgram(program, args);
        await client.StandardInput.WriteAsync(send);
        await client.StandardInput.FlushAsync();
        await client.WaitForStdoutAsync(GreetingBytes.Length + send.Length, Deadline);
        client.StandardInput.Close();
        await client.WaitForExitAsync(ExitDeadline);
        return Encoding.UTF8.GetString(client.StandardOutputBytes);
    }

    [Theory]
    [InlineData("-tls1_3", "TLSv1.3")]
    [InlineData("-tls1_2", "TLSv1.2")]
    public async Task Openssl_s_client_gets_the_greeting_and_the_echo_inside_TLS(string version, string logged)
    {
        var (server, port) = await ChildProcess.StartServerAsync(["--quiet", .. ServerTls]);
        await using (server)
        {
            string output = await TalkAsync("openssl", "hello over tls\n"u8.ToArray(),
                "s_client", "-quiet", "-no_ign_eof", version, "-verify_return_error", "-CAfile", _pki.Path("ca.pem"), "-servername", "localhost", "-connect", $"127.0.0.1:{port}");
            Assert.Equal(Greeting + "hello over tls\n", output);
            await server.WaitForStderrAsync($"connection 1: {logged} ", Deadline);
        }
    }

    [Fact]
    public async Task Socat_ncat_and_gnutls_cli_verify_the_server_and_get_their_echo()
    {
        var (server, port) = await ChildProcess.StartServerAsync(["--quiet", .. ServerTls]);
        await using (server)
        {
            Assert.Equal(Greeting + "socat\n", await TalkAsync("socat", "socat\n"u8.ToArray(),
                "-", $"OPENSSL:127.0.0.1:{port},cafile={_pki.Path("ca.pem")},verify=1"));
            Assert.Equal(Greeting + "ncat\n", await TalkAsync("ncat", "ncat\n"u8.ToArray(),
                "--ssl", "--ssl-verify", "--ssl-trustfile", _pki.Path("ca.pem"), "localhost", Port(port)));
            Assert.Equal(Greeting + "gnutls\n", await TalkAsync("gnutls-cli", "gnutls\n"u8.ToArray(),
                "--x509cafile", _pki.Path("ca.pem"), "--logfile", "/dev/null", "--port", Port(port), "localhost"));
        }
    }

    [Fact]
    public async Task Mutual_TLS_accepts_a_client_of_the_CA_logs_who_it_is_and_refuses_no_certificate_and_a_stranger()
    {
        var (server, port) = await ChildProcess.StartServerAsync(["--quiet", .. ServerTls, "--tls-client-ca", _pki.Path("ca.pem")]);
        await using (server)
        {
            string[] common = ["s_client", "-quiet", "-no_ign_eof", "-verify_return_error", "-CAfile", _pki.Path("ca.pem"), "-connect", $"127.0.0.1:{port}"];
            Assert.Equal(Greeting + "alice\n", await TalkAsync("openssl", "alice\n"u8.ToArray(),
                [.. common, "-cert", _pki.Path("client.pem"), "-key", _pki.Path("client.key")]));
            string line = await server.WaitForStderrAsync("client certificate", Deadline);
            Assert.Contains("CN=alice", line, StringComparison.Ordinal);
            Assert.Contains("sha256 " + _pki.Fingerprint("client.pem"), line, StringComparison.Ordinal);

            using (var anonymous = await TlsClientAsync(port, null))
            {
                await ReadToEndQuietlyAsync(anonymous); // TLS 1.3: the refusal comes after the client's handshake ends
            }

            await server.WaitForStderrAsync("refused: tls: no client certificate (--tls-client-auth require)", Deadline);

            using (var stranger = await TlsClientAsync(port, (_pki.Path("stranger.pem"), _pki.Path("stranger.key"))))
            {
                await ReadToEndQuietlyAsync(stranger);
            }

            string refused = await server.WaitForStderrAsync("refused: tls: client certificate \"CN=mallory\" not trusted", Deadline);
            Assert.Contains("connection 3", refused, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_plaintext_client_on_the_TLS_port_is_refused_with_what_it_sent()
    {
        var (server, port) = await ChildProcess.StartServerAsync(["--quiet", .. ServerTls]);
        await using (server)
        {
            using var plain = await ConnectAsync(port);
            await plain.SendAsync("GET / HTTP/1.1\r\n"u8.ToArray());
            Assert.Empty(await ReceiveToEndAsync(plain));
            await server.WaitForStderrAsync("refused: tls: not TLS: first bytes look like \"GET / HTTP/1.1\\r\\n\"", Deadline);
        }
    }

    [Fact]
    public async Task A_handshake_that_stalls_is_refused_at_the_handshake_timeout()
    {
        var (server, port) = await ChildProcess.StartServerAsync(["--quiet", .. ServerTls, "--tls-handshake-timeout", "300ms"]);
        await using (server)
        {
            using var slow = await ConnectAsync(port);
            await slow.SendAsync(new byte[] { 0x16, 0x03, 0x01 }); // a handshake record begins, and nothing more comes
            var started = Stopwatch.StartNew();
            Assert.Empty(await ReceiveToEndAsync(slow));
            Assert.InRange(started.Elapsed, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(5));
            await server.WaitForStderrAsync("refused: tls: not complete within 300ms", Deadline);
        }
    }

    [Theory]
    [InlineData("missing", "cannot read the certificate file")]
    [InlineData("wrong-key", "is not the key of the certificate in")]
    [InlineData("expired", "expired on")]
    [InlineData("no-key", "holds no private key: give it with --tls-key")]
    public async Task A_certificate_that_cannot_serve_stops_the_start_with_one_line(string what, string expected)
    {
        string[] args = what switch
        {
            "missing" => ["--tls-cert", _pki.Path("nothing.pem"), "--tls-key", _pki.Path("server.key")],
            "wrong-key" => ["--tls-cert", _pki.Path("server.pem"), "--tls-key", _pki.Path("unrelated.key")],
            "expired" => ["--tls-cert", _pki.Path("expired.pem"), "--tls-key", _pki.Path("expired.key")],
            _ => ["--tls-cert", _pki.Path("server.pem")],
        };
        var result = await ChildProcess.RunAsync(ExitDeadline, null, ["serve", "--port", "0", .. args]);
        Assert.Equal(3, result.ExitCode);
        string line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("echokit: TLS: ", line, StringComparison.Ordinal);
        Assert.Contains(expected, line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Tls_port_serves_TLS_beside_plaintext_on_port()
    {
        var (server, port) = await ChildProcess.StartServerAsync(["--quiet", .. ServerTls, "--tls-port", "0"]);
        await using (server)
        {
            string tlsLine = await server.WaitForStderrAsync("(TLS)", Deadline);
            int tlsPort = ChildProcess.PortOf(tlsLine[..tlsLine.IndexOf(" (", StringComparison.Ordinal)]);
            Assert.NotEqual(port, tlsPort);
            using (var plain = await ConnectAsync(port))
            {
                Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(plain, GreetingBytes.Length));
            }

            using var secure = await TlsClientAsync(tlsPort, null);
            Assert.Equal(GreetingBytes, await ReadExactlyAsync(secure, GreetingBytes.Length));
        }
    }

    [Fact]
    public async Task A_self_signed_certificate_is_made_at_start_and_its_logged_fingerprint_is_the_one_served()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--tls-self-signed");
        await using (server)
        {
            string line = await server.WaitForStderrAsync("TLS certificate:", Deadline);
            using var client = await TlsClientAsync(port, null, validate: false);
            string served = Fingerprint(client.RemoteCertificate!);
            Assert.Contains("sha256 " + served, line, StringComparison.Ordinal);
            Assert.Contains("self-signed", line, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_reload_whose_config_names_another_certificate_serves_it_and_a_self_signed_one_is_kept()
    {
        string config = _pki.Path("serve.conf");
        File.WriteAllText(config, $"tls-cert = {_pki.Path("server.pem")}\ntls-key = {_pki.Path("server.key")}\n");
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--config", config);
        await using (server)
        {
            using (var before = await TlsClientAsync(port, null))
            {
                Assert.Equal(_pki.Fingerprint("server.pem"), Fingerprint(before.RemoteCertificate!));
            }

            File.WriteAllText(config, $"tls-cert = {_pki.Path("server2.pem")}\ntls-key = {_pki.Path("server2.key")}\n");
            server.Signal(1); // SIGHUP
            string line = await server.WaitForStderrAsync("SIGHUP: configuration reloaded", Deadline);
            Assert.Contains($"tls-cert {_pki.Path("server.pem")} -> {_pki.Path("server2.pem")}", line, StringComparison.Ordinal);
            using var after = await TlsClientAsync(port, null);
            Assert.Equal(_pki.Fingerprint("server2.pem"), Fingerprint(after.RemoteCertificate!));
        }

        // A self-signed certificate made at start stays what clients pinned: a reload does not make another.
        var (selfSigned, selfPort) = await ChildProcess.StartServerAsync("--quiet", "--tls-self-signed");
        await using (selfSigned)
        {
            string first;
            using (var client = await TlsClientAsync(selfPort, null, validate: false))
            {
                first = Fingerprint(client.RemoteCertificate!);
            }

            selfSigned.Signal(1);
            await selfSigned.WaitForStderrAsync("SIGHUP: configuration reloaded", Deadline);
            using var again = await TlsClientAsync(selfPort, null, validate: false);
            Assert.Equal(first, Fingerprint(again.RemoteCertificate!));
        }
    }

    [Fact]
    public async Task Sighup_rotates_the_certificate_for_new_handshakes_keeps_live_connections_and_keeps_the_old_on_a_bad_file()
    {
        string cert = _pki.Path("live.pem"), key = _pki.Path("live.key");
        File.Copy(_pki.Path("server.pem"), cert);
        File.Copy(_pki.Path("server.key"), key);
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--tls-cert", cert, "--tls-key", key);
        await using (server)
        {
            using var before = await TlsClientAsync(port, null);
            Assert.Equal(GreetingBytes, await ReadExactlyAsync(before, GreetingBytes.Length));
            Assert.Equal(_pki.Fingerprint("server.pem"), Fingerprint(before.RemoteCertificate!));

            File.Copy(_pki.Path("server2.pem"), cert, overwrite: true);
            File.Copy(_pki.Path("server2.key"), key, overwrite: true);
            server.Signal(1); // SIGHUP
            await server.WaitForStderrAsync("TLS certificate reloaded", Deadline);
            using (var after = await TlsClientAsync(port, null))
            {
                Assert.Equal(_pki.Fingerprint("server2.pem"), Fingerprint(after.RemoteCertificate!));
            }

            await before.WriteAsync("still here\n"u8.ToArray());
            Assert.Equal("still here\n"u8.ToArray(), await ReadExactlyAsync(before, 11));

            File.WriteAllText(key, "not a key");
            server.Signal(1);
            await server.WaitForStderrAsync("TLS certificate not reloaded, the old one stays", Deadline);
            using var still = await TlsClientAsync(port, null);
            Assert.Equal(_pki.Fingerprint("server2.pem"), Fingerprint(still.RemoteCertificate!));
        }
    }

    [Fact]
    public async Task Two_hundred_fifty_six_MiB_come_back_intact_and_a_close_notify_is_answered_with_close_notify_and_FIN()
    {
        var (server, port) = await ChildProcess.StartServerAsync(["--quiet", "--no-greeting", .. ServerTls]);
        await using (server)
        {
            using var client = await TlsClientAsync(port, null);
            const int total = 256 << 20;
            var chunk = new byte[1 << 20];
            Random.Shared.NextBytes(chunk);
            var sending = Task.Run(async () =>
            {
                for (int sent = 0; sent < total; sent += chunk.Length)
                {
                    await client.WriteAsync(chunk);
                }
            });
            using var expected = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            using var received = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            for (int i = 0; i < total / chunk.Length; i++)
            {
                expected.AppendData(chunk);
            }

            var buffer = new byte[256 * 1024];
            long count = 0;
            using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(120));
            while (true)
            {
                int n;
                try
                {
                    n = await client.ReadAsync(buffer, deadline.Token); // 0 only after the server's close_notify
                }
                catch (OperationCanceledException)
                {
                    Assert.Fail($"stalled after {count} of {total} bytes back; the sender is {sending.Status}; server log:\n{server.StandardErrorText}");
                    throw;
                }

                if (n == 0)
                {
                    break;
                }

                received.AppendData(buffer.AsSpan(0, n));
                count += n;
                if (count == total)
                {
                    // Everything is back: now our close_notify (SslStream refuses ShutdownAsync while a read is pending).
                    await sending;
                    await client.ShutdownAsync();
                }
            }

            await sending;
            Assert.Equal(total, count);
            Assert.Equal(expected.GetHashAndReset(), received.GetHashAndReset());
            await server.WaitForStderrAsync("closed: closed by peer", Deadline);
        }
    }

    [Fact]
    public async Task The_graceful_drain_ends_a_TLS_connection_with_close_notify_and_exit_0()
    {
        var (server, port) = await ChildProcess.StartServerAsync(["--quiet", .. ServerTls]);
        await using (server)
        {
            using var client = await TlsClientAsync(port, null);
            Assert.Equal(GreetingBytes, await ReadExactlyAsync(client, GreetingBytes.Length));
            await client.WriteAsync("before the signal\n"u8.ToArray());
            Assert.Equal("before the signal\n"u8.ToArray(), await ReadExactlyAsync(client, 18));
            server.Signal(ChildProcess.SIGTERM);
            using var deadline = new CancellationTokenSource(Deadline);
            Assert.Equal(0, await client.ReadAsync(new byte[16], deadline.Token)); // a clean end, not a truncation error
            await client.ShutdownAsync();
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        }
    }

    [Fact]
    public async Task Tls_on_a_Unix_socket_file()
    {
        string path = _pki.Path("tls.sock");
        await using var server = ChildProcess.Start(["serve", "--quiet", "--unix", path, .. ServerTls]);
        await server.WaitForStderrAsync("listening on", Deadline);
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
        using var tls = new SslStream(new NetworkStream(socket, ownsSocket: false));
        await tls.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = "localhost", RemoteCertificateValidationCallback = (_, _, _, _) => true });
        Assert.Equal(GreetingBytes, await ReadExactlyAsync(tls, GreetingBytes.Length));
    }

    private async Task<SslStream> TlsClientAsync(int port, (string Cert, string Key)? clientCertificate, bool validate = true)
    {
        var socket = await ConnectAsync(port);
        var tls = new SslStream(new NetworkStream(socket, ownsSocket: true));
        using var ca = X509Certificate2.CreateFromPem(File.ReadAllText(_pki.Path("ca.pem")));
        var options = new SslClientAuthenticationOptions
        {
            TargetHost = "localhost",
            CertificateChainPolicy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, CustomTrustStore = { ca }, RevocationMode = X509RevocationMode.NoCheck },
        };
        if (!validate)
        {
            options.RemoteCertificateValidationCallback = (_, _, _, _) => true;
        }

        if (clientCertificate is { } pair)
        {
            options.ClientCertificates = [X509Certificate2.CreateFromPemFile(pair.Cert, pair.Key)];
        }

        await tls.AuthenticateAsClientAsync(options).WaitAsync(Deadline);
        return tls;
    }

    private static async Task ReadToEndQuietlyAsync(SslStream tls)
    {
        try
        {
            using var deadline = new CancellationTokenSource(Deadline);
            while (await tls.ReadAsync(new byte[256], deadline.Token) > 0)
            {
            }
        }
        catch (Exception e) when (e is IOException or System.Security.Authentication.AuthenticationException)
        {
            // The server's alert or reset: what a refused client sees.
        }
    }

    private static async Task<byte[]> ReadExactlyAsync(Stream stream, int count)
    {
        var buffer = new byte[count];
        using var deadline = new CancellationTokenSource(Deadline);
        await stream.ReadExactlyAsync(buffer, deadline.Token);
        return buffer;
    }

    private static string Fingerprint(X509Certificate certificate)
    {
        using var copy = new X509Certificate2(certificate);
        return Convert.ToHexString(copy.GetCertHash(HashAlgorithmName.SHA256)).Chunk(2).Select(p => new string(p)).Aggregate((a, b) => a + ":" + b);
    }
}

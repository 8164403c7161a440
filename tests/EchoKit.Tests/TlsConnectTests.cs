using System.Globalization;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// <c>echokit connect --tls</c>: verifies the server by default and never carries on after a failed check (exit 12,
/// with the reason), against our server, <c>openssl s_server</c> and <c>socat OPENSSL-LISTEN</c>.
/// </summary>
public sealed class TlsConnectTests : IDisposable
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(30);
    private readonly TestCertificates _pki = new();

    public void Dispose() => _pki.Dispose();

    private static string Port(int port) => port.ToString(CultureInfo.InvariantCulture);

    private Task<(ChildProcess Process, int Port)> StartTlsServerAsync(params string[] extra) =>
        ChildProcess.StartServerAsync(["--quiet", "--no-greeting", "--tls-cert", _pki.Path("server.pem"), "--tls-key", _pki.Path("server.key"), .. extra]);

    private static Task<ChildProcess.Result> ConnectAsync(params string[] args) =>
        ChildProcess.RunAsync(ExitDeadline, null, ["connect", "--tls", .. args]);

    [Fact]
    public async Task A_server_of_the_given_CA_is_verified_and_echoes_and_the_session_is_described()
    {
        var (server, port) = await StartTlsServerAsync();
        await using (server)
        {
            var result = await ConnectAsync("--tls-ca", _pki.Path("ca.pem"), "localhost", Port(port), "--send", "secret\\n");
            Assert.True(result.ExitCode == 0, result.ToString());
            Assert.Equal("secret\n", result.StdoutText);
            Assert.Contains("echokit: TLS: TLSv1.3", result.Stderr, StringComparison.Ordinal);
            Assert.Contains("sha256 " + _pki.Fingerprint("server.pem"), result.Stderr, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Unknown_issuer_name_mismatch_and_a_wrong_pin_are_refused_with_the_reason_and_exit_12()
    {
        var (server, port) = await StartTlsServerAsync();
        await using (server)
        {
            var unknown = await ConnectAsync("127.0.0.1", Port(port), "--send", "x"); // the system store knows no test CA
            Assert.Equal(12, unknown.ExitCode);
            Assert.Contains("unknown issuer: \"CN=EchoKit test CA\" is not a CA this client trusts", unknown.Stderr, StringComparison.Ordinal);
            Assert.Empty(unknown.Stdout);

            var mismatch = await ConnectAsync("--tls-ca", _pki.Path("ca.pem"), "--tls-sni", "mail.example.com", "127.0.0.1", Port(port), "--send", "x");
            Assert.Equal(12, mismatch.ExitCode);
            Assert.Contains("name mismatch: the certificate is for localhost, 127.0.0.1, ::1, not mail.example.com", mismatch.Stderr, StringComparison.Ordinal);

            var wrongPin = await ConnectAsync("--tls-pin", new string('0', 64), "127.0.0.1", Port(port), "--send", "x");
            Assert.Equal(12, wrongPin.ExitCode);
            Assert.Contains("not the pinned", wrongPin.Stderr, StringComparison.Ordinal);

            var pinned = await ConnectAsync("--tls-pin", _pki.Fingerprint("server.pem"), "127.0.0.1", Port(port), "--send", "pinned\\n");
            Assert.True(pinned.ExitCode == 0, pinned.ToString());
            Assert.Equal("pinned\n", pinned.StdoutText);

            var insecure = await ConnectAsync("--tls-insecure", "127.0.0.1", Port(port), "--send", "anyway\\n");
            Assert.Equal(0, insecure.ExitCode);
            Assert.Contains("warning: --tls-insecure: the server's certificate is not checked", insecure.Stderr, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task An_expired_certificate_from_openssl_s_server_is_refused_and_a_valid_one_talks()
    {
        int port = FreePort();
        await using (var expired = ChildProcess.StartProgram("openssl", "s_server", "-quiet", "-rev", "-accept", Port(port), "-naccept", "1",
            "-cert", _pki.Path("expired.pem"), "-key", _pki.Path("expired.key")))
        {
            await WaitUntilListeningQuietlyAsync(port, Deadline);
            var result = await ConnectAsync("--tls-ca", _pki.Path("ca.pem"), "localhost", Port(port), "--send", "x");
            Assert.Equal(12, result.ExitCode);
            Assert.Contains("expired on", result.Stderr, StringComparison.Ordinal);
        }

        port = FreePort();
        await using var valid = ChildProcess.StartProgram("openssl", "s_server", "-quiet", "-rev", "-accept", Port(port), "-naccept", "1",
            "-cert", _pki.Path("server.pem"), "-key", _pki.Path("server.key"));
        await WaitUntilListeningQuietlyAsync(port, Deadline);
        var talk = await ConnectAsync("--tls-ca", _pki.Path("ca.pem"), "localhost", Port(port), "--send", "stressed\\n");
        Assert.True(talk.ExitCode == 0, talk.ToString());
        Assert.Equal("desserts\n", talk.StdoutText); // s_server -rev answers each line reversed
    }

    [Fact]
    public async Task Socat_OPENSSL_LISTEN_is_talked_to_with_a_client_certificate_it_requires()
    {
        int port = FreePort();
        await using var socat = ChildProcess.StartProgram("socat",
            $"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,cert={_pki.Path("server.pem")},key={_pki.Path("server.key")},cafile={_pki.Path("ca.pem")},verify=1",
            "EXEC:cat");
        await WaitUntilListeningQuietlyAsync(port, Deadline);
        var result = await ConnectAsync("--tls-ca", _pki.Path("ca.pem"), "--tls-cert", _pki.Path("client.pem"), "--tls-key", _pki.Path("client.key"),
            "localhost", Port(port), "--send", "mutual\\n");
        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.Equal("mutual\n", result.StdoutText);
    }

    [Fact]
    public async Task Mutual_TLS_against_our_server_with_and_without_the_client_certificate()
    {
        var (server, port) = await StartTlsServerAsync("--tls-client-ca", _pki.Path("ca.pem"));
        await using (server)
        {
            var with = await ConnectAsync("--tls-ca", _pki.Path("ca.pem"), "--tls-cert", _pki.Path("client.pem"), "--tls-key", _pki.Path("client.key"),
                "localhost", Port(port), "--send", "me\\n");
            Assert.True(with.ExitCode == 0, with.ToString());
            Assert.Equal("me\n", with.StdoutText);

            // TLS 1.3: the client's handshake is over before the server has judged its certificate, so it learns
            // of the refusal as a close; what it sent never comes back.
            var without = await ConnectAsync("--tls-ca", _pki.Path("ca.pem"), "localhost", Port(port), "--send", "me\\n");
            Assert.Empty(without.Stdout);
            Assert.Contains("received 0 bytes", without.Stderr, StringComparison.Ordinal);
            await server.WaitForStderrAsync("refused: tls: no client certificate", Deadline);
        }
    }

    [Theory]
    [InlineData("the --tls-* options need --tls", "--tls-ca", "x.pem")]
    [InlineData("--tls-insecure checks nothing", "--tls", "--tls-insecure", "--tls-pin", "00")]
    [InlineData("invalid --tls-pin value 'abc'", "--tls", "--tls-pin", "abc")]
    [InlineData("--tls is for stream connections", "--tls", "--udp")]
    public Task Contradictory_TLS_flags_are_usage_errors(string expected, params string[] args) =>
        ServeProcessTests.AssertUsageErrorAsync(expected, ["connect", "127.0.0.1", "9", .. args]);
}

using System.Text.Json;
using EchoKit.Tests.Infrastructure;

namespace EchoKit.Tests;

/// <summary><c>echokit bench --tls</c> and the handshake-rate mode (<c>--reconnect</c>), with and without TLS.</summary>
public sealed class TlsBenchTests : IDisposable
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(40);
    private readonly TestCertificates _pki = new();

    public void Dispose() => _pki.Dispose();

    private Task<(ChildProcess Process, int Port)> StartTlsServerAsync(params string[] extra) =>
        ChildProcess.StartServerAsync(["--quiet", "--log-level", "Warning", "--tls-cert", _pki.Path("server.pem"), "--tls-key", _pki.Path("server.key"), .. extra]);

    [Fact]
    public async Task Bench_tls_checks_every_echoed_byte_through_TLS()
    {
        var (server, port) = await StartTlsServerAsync();
        await using (server)
        {
            var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", "--tls", "--tls-ca", _pki.Path("ca.pem"), $"localhost:{port}",
                "-c", "4", "-d", "4", "-s", "1000", "-t", "1s", "--warmup", "200ms", "--json");
            Assert.True(result.ExitCode == 0, result.ToString());
            using var json = JsonDocument.Parse(result.StdoutText);
            Assert.True(json.RootElement.GetProperty("msgs").GetInt64() > 100, result.StdoutText);
            Assert.Equal(0, json.RootElement.GetProperty("mismatches").GetInt64());
        }
    }

    [Fact]
    public async Task Bench_tls_against_an_untrusted_server_says_why_and_exits_12()
    {
        var (server, port) = await StartTlsServerAsync();
        await using (server)
        {
            var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", "--tls", $"127.0.0.1:{port}", "-c", "2", "-t", "500ms", "--warmup", "0");
            Assert.Equal(12, result.ExitCode);
            Assert.Contains("unknown issuer", result.Stderr, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Reconnect_measures_whole_cycles_with_and_without_TLS(bool tls)
    {
        var (server, port) = tls ? await StartTlsServerAsync() : await ChildProcess.StartServerAsync("--quiet", "--log-level", "Warning");
        await using (server)
        {
            string[] tlsArgs = tls ? ["--tls", "--tls-ca", _pki.Path("ca.pem")] : [];
            var result = await ChildProcess.RunAsync(ExitDeadline, null, ["bench", .. tlsArgs, $"localhost:{port}", "--reconnect", "-c", "4", "-t", "1s", "--warmup", "200ms"]);
            Assert.True(result.ExitCode == 0, result.ToString());
            Assert.Contains(tls ? "cycles/s (handshakes/s)" : "cycles/s", result.StdoutText, StringComparison.Ordinal);
            Assert.Contains(tls ? "reconnecting (TLS handshake, greeting, one echo, close)" : "reconnecting (connect, greeting, one echo, close)",
                result.StdoutText, StringComparison.Ordinal);
            Assert.Matches(@"messages    [1-9][0-9,]*   errors 0   mismatches 0", result.StdoutText);
        }
    }

    [Fact]
    public async Task A_client_certificate_the_server_refuses_fails_the_run_with_what_happened()
    {
        var (server, port) = await StartTlsServerAsync("--tls-client-ca", _pki.Path("ca.pem"), "--tls-client-auth", "require");
        await using (server)
        {
            var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", "--tls", "--tls-ca", _pki.Path("ca.pem"), "--tls-cert", _pki.Path("stranger.pem"),
                "--tls-key", _pki.Path("stranger.key"), $"localhost:{port}", "--reconnect", "-c", "2", "-t", "500ms", "--warmup", "0", "--skip-greeting", "181");
            Assert.NotEqual(0, result.ExitCode); // TLS 1.3: the handshake ends before the server judges the certificate, then it closes
            Assert.Contains("the server closed the connection before the benchmark started", result.Stderr, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("--reconnect sends one message per connection", "--reconnect", "-d", "2")]
    [InlineData("--reconnect is for stream connections", "--reconnect", "--udp")]
    [InlineData("--tls is for stream connections", "--tls", "--udp")]
    public Task Contradictory_flags_are_usage_errors(string expected, params string[] args) =>
        ServeProcessTests.AssertUsageErrorAsync(expected, ["bench", "127.0.0.1:9", .. args]);
}

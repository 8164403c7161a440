using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using EchoKit.Tests.Infrastructure;

namespace EchoKit.Tests;

/// <summary>The real <c>echokit bench</c> process against real servers on loopback.</summary>
public sealed class BenchProcessTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(60);

    [Theory]
    [InlineData(true, "1", "epoll")]
    [InlineData(false, "4", "epoll")]
    [InlineData(true, "1", "socket")]
    [InlineData(false, "4", "socket")]
    public async Task Bench_reports_json_with_echoloads_fields_and_detects_the_greeting(bool greeting, string depth, string engine)
    {
        await using var server = new EchoServer(new EchoServerOptions { Port = 0, SendGreeting = greeting });
        server.Start();
        var result = await ChildProcess.RunAsync(ExitDeadline, null,
            "bench", $"127.0.0.1:{server.LocalEndPoints[0].Port}", "-c", "4", "-d", depth, "-s", "100", "-t", "1s", "--warmup", "200ms", "--json", "--engine", engine);

        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = JsonDocument.Parse(result.StdoutText);
        var root = json.RootElement;
        foreach (var field in new[] { "msgs_per_s", "mbytes_per_s", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "errors", "mismatches" })
        {
            Assert.True(root.TryGetProperty(field, out _), $"no {field} in {result.StdoutText}");
        }

        Assert.True(root.GetProperty("msgs").GetInt64() > 100, result.StdoutText);
        Assert.Equal(0, root.GetProperty("mismatches").GetInt64());
        Assert.Equal(0, root.GetProperty("errors").GetInt64());
        Assert.True(root.GetProperty("p50_us").GetDouble() <= root.GetProperty("p99_us").GetDouble());
        double expectedMBytes = root.GetProperty("msgs_per_s").GetDouble() * 100 / 1e6; // 100-byte messages
        Assert.InRange(root.GetProperty("mbytes_per_s").GetDouble(), expectedMBytes - 0.011, expectedMBytes + 0.011); // printed to 2 decimals
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Without_skip_greeting_400_connections_to_a_server_that_sends_none_start_at_once(string engine)
    {
        // Detection waits 300 ms for a greeting that does not come. Done for each of 400 connections on the
        // thread pool's few blocked threads, that took 21 s before the first message (1,000 connections: 37 s).
        // Now it is done once, on the first connection, and the others connect on threads of their own: the
        // whole run takes under a second here.
        await using var server = new EchoServer(new EchoServerOptions { Port = 0, SendGreeting = false });
        server.Start();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var result = await ChildProcess.RunAsync(ExitDeadline, null,
            "bench", $"127.0.0.1:{server.LocalEndPoints[0].Port}", "-c", "400", "-t", "300ms", "--warmup", "0", "--json", "--engine", engine);

        Assert.True(result.ExitCode == 0, result.ToString());
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(8), $"400 connections took {clock.Elapsed.TotalSeconds:F1} s to a server without a greeting\n{result.Stderr}");
        using var json = JsonDocument.Parse(result.StdoutText);
        Assert.Equal(400, json.RootElement.GetProperty("active_at_end").GetInt64());
        Assert.Equal(0, json.RootElement.GetProperty("mismatches").GetInt64());
    }

    [Fact]
    public async Task A_greeting_of_another_server_is_detected_and_skipped_on_every_connection()
    {
        // socat greets each client with its own line, then echoes (cat): nothing of the greeting may be
        // taken for an echo, on any connection.
        int port = Loopback.FreePort();
        await using var socat = ChildProcess.StartProgram("socat", $"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
            "SYSTEM:echo 220 socat greets you; exec cat");
        await Loopback.WaitUntilListeningAsync(port, Loopback.Deadline);
        var result = await ChildProcess.RunAsync(ExitDeadline, null,
            "bench", $"127.0.0.1:{port}", "-c", "3", "-t", "500ms", "--warmup", "100ms", "--json");

        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = JsonDocument.Parse(result.StdoutText);
        Assert.True(json.RootElement.GetProperty("msgs").GetInt64() > 10, result.StdoutText);
        Assert.Equal(0, json.RootElement.GetProperty("mismatches").GetInt64());
        Assert.Equal(3, json.RootElement.GetProperty("active_at_end").GetInt64());
    }

    [Theory]
    [InlineData("epoll", ChildProcess.SIGINT)]
    [InlineData("socket", ChildProcess.SIGTERM)]
    public async Task Ctrl_C_ends_the_run_early_and_reports_what_was_measured_so_far(string engine, int signal)
    {
        await using var server = new EchoServer(new EchoServerOptions { Port = 0, SendGreeting = false });
        server.Start();
        await using var bench = ChildProcess.Start("bench", $"127.0.0.1:{server.LocalEndPoints[0].Port}", "-c", "4", "-t", "60s",
            "--warmup", "0", "--skip-greeting", "0", "--json", "--engine", engine);
        await bench.WaitForStderrAsync("measuring t=", Loopback.Deadline); // the once-a-second progress line

        bench.Signal(signal);
        Assert.Equal(0, await bench.WaitForExitAsync(ExitDeadline));
        using var json = JsonDocument.Parse(bench.StandardOutputBytes);
        var root = json.RootElement;
        Assert.InRange(root.GetProperty("seconds").GetDouble(), 0.5, 50);
        Assert.True(root.GetProperty("msgs").GetInt64() > 0, Encoding.UTF8.GetString(bench.StandardOutputBytes));
        Assert.Equal(0, root.GetProperty("mismatches").GetInt64());
        Assert.Equal(4, root.GetProperty("active_at_end").GetInt64());
        Assert.Contains("stopped early by a signal", bench.StandardErrorText, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Open_loop_sends_on_schedule_and_measures_every_reply(string engine)
    {
        await using var server = new EchoServer(new EchoServerOptions { Port = 0, SendGreeting = false });
        server.Start();
        var result = await ChildProcess.RunAsync(ExitDeadline, null,
            "bench", $"127.0.0.1:{server.LocalEndPoints[0].Port}", "-c", "4", "--rate", "2000", "-t", "2s", "--warmup", "300ms",
            "--skip-greeting", "0", "--json", "--engine", engine);

        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = JsonDocument.Parse(result.StdoutText);
        var root = json.RootElement;
        // The server keeps up easily, so what is measured is the schedule: 2,000 messages a second.
        Assert.InRange(root.GetProperty("msgs_per_s").GetDouble(), 1700, 2300);
        Assert.Equal(0, root.GetProperty("errors").GetInt64());
        Assert.Equal(0, root.GetProperty("mismatches").GetInt64());
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task A_server_that_corrupts_bytes_is_caught_exit_9(string engine)
    {
        // An "echo" server that flips one bit of every 1000th byte.
        using var server = new TamperingEchoServer((_, position, data) =>
        {
            for (int i = 0; i < data.Length; i++)
            {
                if ((position + i) % 1000 == 999)
                {
                    data[i] ^= 1;
                }
            }

            return data.Length;
        });

        var result = await ChildProcess.RunAsync(ExitDeadline, null,
            "bench", $"127.0.0.1:{server.Port}", "-c", "2", "-t", "500ms", "--warmup", "0", "--skip-greeting", "0", "--json", "--engine", engine);

        Assert.Equal(9, result.ExitCode);
        using var json = JsonDocument.Parse(result.StdoutText);
        Assert.True(json.RootElement.GetProperty("mismatches").GetInt64() > 0);
        Assert.Contains("echoed bytes differed", result.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Connections_the_server_drops_mid_run_are_counted_exit_10(string engine)
    {
        // An echo server that closes every second connection after echoing 6,400 bytes (100 messages).
        using var server = new TamperingEchoServer((connection, position, data) =>
            connection % 2 == 1 ? (int)Math.Clamp(6_400 - position, 0, data.Length) : data.Length);

        var result = await ChildProcess.RunAsync(ExitDeadline, null,
            "bench", $"127.0.0.1:{server.Port}", "-c", "4", "-t", "1s", "--warmup", "200ms",
            "--skip-greeting", "0", "--json", "--engine", engine);

        Assert.Equal(10, result.ExitCode);
        Assert.Contains("2 of 4 connections failed (0 could not connect, 2 dropped; the first dropped: closed by the server)", result.Stderr, StringComparison.Ordinal);
        using var json = JsonDocument.Parse(result.StdoutText);
        Assert.Equal(2, json.RootElement.GetProperty("active_at_end").GetInt64());
        Assert.Equal(0, json.RootElement.GetProperty("mismatches").GetInt64());
    }

    [Fact]
    public async Task Nobody_listening_is_connection_refused_exit_5()
    {
        int port = Loopback.FreePort();
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", $"127.0.0.1:{port}", "-c", "3", "-t", "1s");
        Assert.Equal(5, result.ExitCode);
        Assert.Contains("Connection refused (ECONNREFUSED)", result.Stderr, StringComparison.Ordinal);
        ServeProcessTests.NoStackTrace(result.Stderr);
    }

    [Theory]
    [InlineData("invalid --connections value '0'", "-c", "0")]
    [InlineData("invalid --size value '2000000'", "-s", "2000000")]
    [InlineData("invalid --depth value 'x'", "-d", "x")]
    [InlineData("invalid --duration value: '0' must be greater than zero", "-t", "0")]
    [InlineData("invalid --rate value '-5'", "--rate", "-5")]
    [InlineData("invalid --skip-greeting value '-1'", "--skip-greeting", "-1")]
    public Task Bench_flags_are_validated(string expected, params string[] args) =>
        ServeProcessTests.AssertUsageErrorAsync(expected, ["bench", "127.0.0.1:9", .. args]);
}

/// <summary>
/// A loopback "echo" server that misbehaves on purpose, for checking that bench notices. Each received
/// chunk goes through <c>tamper(connection number, stream position, bytes)</c>, which may change the bytes
/// and returns how many to send back; fewer than were received ends that connection.
/// </summary>
internal sealed class TamperingEchoServer : IDisposable
{
    private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
    private readonly CancellationTokenSource _stop = new();

    public delegate int Tamper(int connection, long position, Span<byte> data);

    public TamperingEchoServer(Tamper tamper)
    {
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen();
        _ = Task.Run(() => AcceptLoopAsync(tamper));
    }

    public int Port => ((IPEndPoint)_listener.LocalEndPoint!).Port;

    private async Task AcceptLoopAsync(Tamper tamper)
    {
        try
        {
            for (int connection = 0; ; connection++)
            {
                var peer = await _listener.AcceptAsync(_stop.Token);
                int number = connection;
                _ = Task.Run(() => EchoAsync(peer, number, tamper));
            }
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // Test over.
        }
    }

    private async Task EchoAsync(Socket peer, int connection, Tamper tamper)
    {
        using (peer)
        {
            var buffer = new byte[4096];
            long position = 0;
            try
            {
                int received;
                while ((received = await peer.ReceiveAsync(buffer, _stop.Token)) > 0)
                {
                    int send = tamper(connection, position, buffer.AsSpan(0, received));
                    await peer.SendAsync(buffer.AsMemory(0, send), _stop.Token);
                    position += send;
                    if (send < received)
                    {
                        return;
                    }
                }
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException)
            {
                // Benchmark over.
            }
        }
    }

    public void Dispose()
    {
        _stop.Cancel(); // not disposed: connections still running read its token as they wind down
        _listener.Dispose();
    }
}

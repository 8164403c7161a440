using System.Globalization;
using System.Net;
using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary><c>echokit serve --udp</c>: RFC 862 datagram echo with reflection protections.</summary>
public sealed class UdpTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);

    internal static Socket UdpClient(IPAddress address, int sourcePort = 0)
    {
        var socket = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        socket.Bind(new IPEndPoint(address, sourcePort));
        return socket;
    }

    /// <summary>One datagram back within the wait, or null.</summary>
    internal static async Task<byte[]?> ReceiveDatagramAsync(Socket socket, TimeSpan wait)
    {
        var buffer = new byte[70_000];
        using var cts = new CancellationTokenSource(wait);
        try
        {
            var any = socket.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any;
            var result = await socket.ReceiveFromAsync(buffer, SocketFlags.None, new IPEndPoint(any, 0), cts.Token);
            return buffer.AsSpan(0, result.ReceivedBytes).ToArray();
        }
        catch (OperationCanceledException)
        {
            return null;
        }
    }

    [Theory]
    [InlineData("127.0.0.1", 1)]
    [InlineData("127.0.0.1", 1400)]
    [InlineData("127.0.0.1", 65_507)]
    [InlineData("::1", 1400)]
    [InlineData("::1", 65_527)]
    public async Task Each_datagram_comes_back_unchanged_up_to_the_largest_UDP_payload(string address, int size)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet");
        await using (server)
        {
            var ip = IPAddress.Parse(address);
            using var client = UdpClient(ip);
            var payload = ServeProcessTests.RandomBytes(size);
            await client.SendToAsync(payload, new IPEndPoint(ip, port));
            Assert.Equal(payload, await ReceiveDatagramAsync(client, Deadline));
        }
    }

    [Fact]
    public async Task Tcp_and_udp_are_served_on_one_port_and_nc_u_and_socat_are_answered()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--tcp", "--udp", "--quiet");
        await using (server)
        {
            using (var tcp = await ConnectAsync(port))
            {
                Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(tcp, GreetingBytes.Length));
            }

            var nc = await ChildProcess.RunProgramAsync("nc", ExitDeadline, "over udp\n"u8.ToArray(), "-u", "-w", "1", "127.0.0.1", port.ToString(CultureInfo.InvariantCulture));
            Assert.Equal("over udp\n", nc.StdoutText);

            var socat = await ChildProcess.RunProgramAsync("socat", ExitDeadline, "socat over udp6\n"u8.ToArray(),
                "-t", "1", "-", $"UDP6:[::1]:{port}");
            Assert.Equal("socat over udp6\n", socat.StdoutText);
        }
    }

    [Fact]
    public async Task A_datagram_over_max_datagram_is_dropped_and_counted_and_recv_timeout_bounds_the_client_wait()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--max-datagram", "1400");
        await using (server)
        {
            var target = new IPEndPoint(IPAddress.Loopback, port);
            using var client = UdpClient(IPAddress.Loopback);
            var exact = ServeProcessTests.RandomBytes(1400);
            await client.SendToAsync(new byte[1401], target);
            await client.SendToAsync(exact, target);
            Assert.Equal(exact, await ReceiveDatagramAsync(client, Deadline)); // the first reply is the 1,400-byte one
            await server.WaitForStderrAsync("1 dropped as larger than 1400 bytes", Deadline);

            // The client's view of a datagram the server drops: reported as lost after --recv-timeout, not waited on.
            var started = System.Diagnostics.Stopwatch.StartNew();
            var lost = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "-u", "127.0.0.1", port.ToString(CultureInfo.InvariantCulture),
                "--send", new string('x', 1500), "--wait", "30s", "--recv-timeout", "300ms");
            Assert.Equal(6, lost.ExitCode);
            Assert.Contains("1 of 1 datagrams got no reply within 300ms", lost.Stderr, StringComparison.Ordinal);
            Assert.True(started.Elapsed < TimeSpan.FromSeconds(15), $"the client waited {started.Elapsed}, not --recv-timeout");
        }
    }

    [Fact]
    public async Task Datagrams_from_source_ports_below_1024_are_dropped_and_counted_unless_allowed()
    {
        Assert.SkipWhen(Environment.UserName != "root", "binding a source port below 1024 needs root");
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet");
        await using (server)
        {
            using var low = UdpClient(IPAddress.Loopback, 999);
            await low.SendToAsync("reflect me"u8.ToArray(), new IPEndPoint(IPAddress.Loopback, port));
            Assert.Null(await ReceiveDatagramAsync(low, TimeSpan.FromMilliseconds(500)));

            using var normal = UdpClient(IPAddress.Loopback);
            await normal.SendToAsync("fine"u8.ToArray(), new IPEndPoint(IPAddress.Loopback, port));
            Assert.Equal("fine"u8.ToArray(), await ReceiveDatagramAsync(normal, Deadline));

            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            Assert.Contains("udp: 1 datagrams echoed, 1 dropped from ports below 1024", server.StandardErrorText, StringComparison.Ordinal);
        }

        var (allowing, allowingPort) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--udp-allow-low-ports");
        await using (allowing)
        {
            using var low = UdpClient(IPAddress.Loopback, 998);
            await low.SendToAsync("allowed"u8.ToArray(), new IPEndPoint(IPAddress.Loopback, allowingPort));
            Assert.Equal("allowed"u8.ToArray(), await ReceiveDatagramAsync(low, Deadline));
        }
    }

    [Fact]
    public async Task The_per_source_rate_limit_answers_about_the_rate_and_drops_the_rest()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--udp-rate", "10");
        await using (server)
        {
            using var client = UdpClient(IPAddress.Loopback);
            var target = new IPEndPoint(IPAddress.Loopback, port);
            for (int i = 0; i < 100; i++)
            {
                await client.SendToAsync(new byte[] { (byte)i }, target);
            }

            int replies = 0;
            while (await ReceiveDatagramAsync(client, TimeSpan.FromMilliseconds(500)) is not null)
            {
                replies++;
            }

            // A bucket of 10 (one second's worth) plus what refills while the burst lasts.
            Assert.InRange(replies, 5, 20);
            await server.WaitForStderrAsync("dropped over the rate", Deadline);
        }
    }

    [Fact]
    public async Task An_unreachable_sender_does_not_stop_the_receive_loop()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet");
        await using (server)
        {
            var target = new IPEndPoint(IPAddress.Loopback, port);
            for (int i = 0; i < 20; i++)
            {
                // Gone before the echo arrives: the server's reply meets a closed port (ICMP unreachable).
                using var vanishing = UdpClient(IPAddress.Loopback);
                await vanishing.SendToAsync(new byte[] { 1, 2, 3 }, target);
            }

            using var client = UdpClient(IPAddress.Loopback);
            await client.SendToAsync("still here"u8.ToArray(), target);
            Assert.Equal("still here"u8.ToArray(), await ReceiveDatagramAsync(client, Deadline));
        }
    }

    [Fact]
    public async Task Connect_udp_sends_each_line_as_a_datagram_prints_replies_and_reports_lost_ones()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--udp-rate", "2");
        await using (server)
        {
            string p = port.ToString(CultureInfo.InvariantCulture);
            var oneShot = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "--udp", "127.0.0.1", p, "--send", "ping\\n");
            Assert.Equal(0, oneShot.ExitCode);
            Assert.Equal("ping\n", oneShot.StdoutText);

            // ::1 is another source address than 127.0.0.1, so another bucket of 2.
            var lines = await ChildProcess.RunAsync(ExitDeadline, "a\nb\nc\nd\ne\n"u8.ToArray(), "connect", "-u", "::1", p, "--wait", "500ms");
            Assert.Equal(6, lines.ExitCode); // the rate limit answered only some: the rest are reported, not waited for
            Assert.Contains("datagrams got no reply within 500ms", lines.Stderr, StringComparison.Ordinal);
            Assert.StartsWith("a\nb\n", lines.StdoutText, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Connect_udp_to_a_port_nobody_serves_is_connection_refused()
    {
        int port;
        using (var probe = UdpClient(IPAddress.Loopback))
        {
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        var result = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "--udp", "127.0.0.1", port.ToString(CultureInfo.InvariantCulture), "--send", "x", "--wait", "1s");
        Assert.Equal(5, result.ExitCode);
        Assert.Contains("Connection refused (ECONNREFUSED)", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bench_udp_measures_ping_pong_datagrams_with_every_byte_checked()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--udp-rate", "0");
        await using (server)
        {
            var result = await ChildProcess.RunAsync(ExitDeadline, null,
                "bench", "--udp", $"127.0.0.1:{port}", "-c", "2", "-s", "512", "-t", "1s", "--warmup", "300ms", "--json");
            Assert.True(result.ExitCode == 0, result.ToString());
            using var json = System.Text.Json.JsonDocument.Parse(result.StdoutText);
            Assert.True(json.RootElement.GetProperty("msgs").GetInt64() > 100, result.StdoutText);
            Assert.Equal(0, json.RootElement.GetProperty("mismatches").GetInt64());
        }
    }

    [Fact]
    public async Task Bench_udp_to_a_port_nobody_answers_says_connection_refused_and_exits_10()
    {
        int port;
        using (var probe = UdpClient(IPAddress.Loopback)) // a UDP port that was free a moment ago
        {
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        var result = await ChildProcess.RunAsync(ExitDeadline, null,
            "bench", "--udp", $"127.0.0.1:{port}", "-c", "2", "-t", "500ms", "--warmup", "0", "--json");
        Assert.Equal(10, result.ExitCode);
        Assert.Contains("2 of 2 UDP flows failed (0 could not connect, 2 dropped; the first dropped: Connection refused (ECONNREFUSED))",
            result.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("with --udp, --size must be at least 16", "-s", "15")]
    [InlineData("with --udp, --size must be at most 65507", "-s", "65508")]
    [InlineData("--udp on the socket engine measures ping-pong only", "--engine", "socket", "-d", "4")]
    [InlineData("--udp on the socket engine has no open loop", "--engine", "socket", "--rate", "100")]
    public Task Bench_udp_flags_are_validated(string expected, params string[] args) =>
        ServeProcessTests.AssertUsageErrorAsync(expected, ["bench", "--udp", "127.0.0.1:9", .. args]);

    [Fact]
    public Task Bench_udp_timeout_needs_udp() =>
        ServeProcessTests.AssertUsageErrorAsync("--udp-timeout needs --udp", ["bench", "127.0.0.1:9", "--udp-timeout", "1s"]);
}

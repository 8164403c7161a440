using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using EchoKit.Internal.Proxy;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// PROXY protocol v1 and v2 (HAProxy's doc/proxy-protocol.txt): the parser on every kind of header and every way
/// of breaking one, and <c>serve --proxy-protocol</c> on both engines with headers split a byte at a time,
/// payload behind the header, health checks, untrusted and silent peers.
/// </summary>
public sealed class ProxyProtocolTests
{
    private static readonly byte[] V2Signature = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

    private static byte[] V2(byte command, byte family, byte[] body)
    {
        var header = new byte[16 + body.Length];
        V2Signature.CopyTo(header, 0);
        header[12] = (byte)(0x20 | command);
        header[13] = family;
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(14), (ushort)body.Length);
        body.CopyTo(header, 16);
        return header;
    }

    private static byte[] Inet(string source, int sourcePort, byte[]? tlvs = null)
    {
        var body = new byte[12 + (tlvs?.Length ?? 0)];
        IPAddress.Parse(source).TryWriteBytes(body, out _);
        IPAddress.Parse("10.0.0.1").TryWriteBytes(body.AsSpan(4), out _);
        BinaryPrimitives.WriteUInt16BigEndian(body.AsSpan(8), (ushort)sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(body.AsSpan(10), 8888);
        tlvs?.CopyTo(body, 12);
        return body;
    }

    [Theory]
    [InlineData("PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n", "192.0.2.1:56324")]
    [InlineData("PROXY TCP6 2001:db8::1 2001:db8::2 4000 8888\r\n", "[2001:db8::1]:4000")]
    [InlineData("PROXY UNKNOWN\r\n", null)]
    [InlineData("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", null)]
    public void A_v1_line_names_the_client(string line, string? client)
    {
        var result = ProxyHeader.Parse(Encoding.ASCII.GetBytes(line + "payload"));
        Assert.Null(result.Error);
        Assert.Equal(line.Length, result.Length);
        Assert.Equal(client, result.Client?.ToString());
    }

    [Fact]
    public void V2_headers_of_every_family_and_command_are_read_and_TLVs_skipped()
    {
        var inet = ProxyHeader.Parse(V2(1, 0x11, Inet("192.0.2.7", 5000, [0x04, 0x00, 0x02, 0xAB, 0xCD])));
        Assert.Equal("192.0.2.7:5000", inet.Client?.ToString());
        Assert.Equal(16 + 12 + 5, inet.Length);

        var body6 = new byte[36];
        IPAddress.Parse("2001:db8::7").TryWriteBytes(body6, out _);
        BinaryPrimitives.WriteUInt16BigEndian(body6.AsSpan(32), 6000);
        Assert.Equal("[2001:db8::7]:6000", ProxyHeader.Parse(V2(1, 0x21, body6)).Client?.ToString());

        var unix = new byte[216];
        Encoding.ASCII.GetBytes("/run/client.sock").CopyTo(unix, 0);
        Assert.Equal("/run/client.sock", ProxyHeader.Parse(V2(1, 0x31, unix)).Client?.ToString());

        var local = ProxyHeader.Parse(V2(0, 0x00, [1, 2, 3])); // LOCAL (a health check) may carry a length
        Assert.Null(local.Error);
        Assert.Null(local.Client);
        Assert.Equal(19, local.Length);

        Assert.Null(ProxyHeader.Parse(V2(1, 0x00, [])).Client); // UNSPEC: the connection's own endpoints
    }

    [Theory]
    [InlineData("PROX")]
    [InlineData("PROXY TCP4 192.0.2.1 198.51.100.1 56324")]
    public void A_header_cut_short_needs_more(string start)
    {
        var result = ProxyHeader.Parse(Encoding.ASCII.GetBytes(start));
        Assert.Null(result.Error);
        Assert.Equal(-1, result.Length);
        Assert.Equal(-1, ProxyHeader.Parse(V2(1, 0x11, Inet("192.0.2.1", 1))[..20]).Length);
        Assert.Equal(-1, ProxyHeader.Parse(V2Signature[..7]).Length);
    }

    [Theory]
    [InlineData("GET / HTTP/1.1\r\n", "no PROXY header: first bytes look like \"GET / HTTP/1.1\\r\\n\"")]
    [InlineData("PROXY TCP4 192.0.2.1 198.51.100.1 56324 65536\r\n", "an address or port that is not TCP4's")]
    [InlineData("PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n", "an address or port that is not TCP4's")]
    [InlineData("PROXY TCP4 192.0.2.1 198.51.100.1 01 2\r\n", "an address or port that is not TCP4's")]
    [InlineData("PROXY TCP5 192.0.2.1 198.51.100.1 1 2\r\n", "expected PROXY TCP4|TCP6")]
    [InlineData("PROXY TCP4  192.0.2.1 198.51.100.1 1 2\r\n", "expected PROXY TCP4|TCP6")]
    public void A_broken_v1_line_is_refused_with_why(string line, string expected)
    {
        var result = ProxyHeader.Parse(Encoding.ASCII.GetBytes(line));
        Assert.Contains(expected, result.Error, StringComparison.Ordinal);
    }

    [Fact]
    public void Oversized_wrong_version_bad_lengths_and_runaway_TLVs_are_refused()
    {
        Assert.Contains("longer than 107 bytes", ProxyHeader.Parse(Encoding.ASCII.GetBytes("PROXY TCP4 " + new string('1', 120))).Error, StringComparison.Ordinal);
        var wrongVersion = V2(1, 0x11, Inet("192.0.2.1", 1));
        wrongVersion[12] = 0x31;
        Assert.Contains("version 3", ProxyHeader.Parse(wrongVersion).Error, StringComparison.Ordinal);
        var wrongCommand = V2(1, 0x11, Inet("192.0.2.1", 1));
        wrongCommand[12] = 0x22;
        Assert.Contains("command 2", ProxyHeader.Parse(wrongCommand).Error, StringComparison.Ordinal);
        var huge = V2(1, 0x11, []);
        BinaryPrimitives.WriteUInt16BigEndian(huge.AsSpan(14), 60_000);
        Assert.Contains("at most", ProxyHeader.Parse(huge).Error, StringComparison.Ordinal);
        Assert.Contains("too short for its address family", ProxyHeader.Parse(V2(1, 0x21, new byte[12])).Error, StringComparison.Ordinal);
        Assert.Contains("address family 7", ProxyHeader.Parse(V2(1, 0x71, [])).Error, StringComparison.Ordinal);
        Assert.Contains("TLV that runs past", ProxyHeader.Parse(V2(1, 0x11, Inet("192.0.2.1", 1, [0x04, 0x00, 0x09, 0x01]))).Error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task A_header_sent_a_byte_at_a_time_names_the_client_and_the_payload_behind_it_is_echoed_once(string engine)
    {
        Assert.SkipWhen(engine == "epoll" && !EchoServer.EpollSupported, "the epoll engine runs on Linux x86-64 only");
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--engine", engine, "--proxy-protocol", "--proxy-from", "127.0.0.1/32");
        await using (server)
        {
            using (var balancer = await ConnectFromAsync("127.0.0.1", port))
            {
                byte[] header = V2(1, 0x11, Inet("203.0.113.9", 4321, [0x01, 0x00, 0x02, (byte)'h', (byte)'2']));
                foreach (byte b in header)
                {
                    await balancer.SendAsync(new[] { b }); // separate segments (TCP_NODELAY): the server reads them as they come
                }

                await balancer.SendAsync("after the header\n"u8.ToArray());
                byte[] expected = [.. GreetingBytes, .. "after the header\n"u8.ToArray()];
                Assert.Equal(expected, await ReceiveExactlyAsync(balancer, expected.Length));
                balancer.Shutdown(SocketShutdown.Send);
                Assert.Empty(await ReceiveToEndAsync(balancer)); // echoed once, nothing more
            }

            await server.WaitForStderrAsync("from 203.0.113.9:4321 closed: closed by peer", Deadline);

            using (var health = await ConnectFromAsync("127.0.0.1", port))
            {
                await health.SendAsync((byte[])[.. V2(0, 0x00, []), .. "ping\n"u8.ToArray()]); // LOCAL, then payload
                byte[] expected = [.. GreetingBytes, .. "ping\n"u8.ToArray()];
                Assert.Equal(expected, await ReceiveExactlyAsync(health, expected.Length));
            }

            using (var stranger = await ConnectFromAsync("127.0.0.2", port))
            {
                // Not a trusted balancer: no header is read, the greeting comes at once, and a header is just bytes.
                Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(stranger, GreetingBytes.Length));
                byte[] spoof = Encoding.ASCII.GetBytes("PROXY TCP4 6.6.6.6 10.0.0.1 666 8888\r\n");
                await stranger.SendAsync(spoof);
                Assert.Equal(spoof, await ReceiveExactlyAsync(stranger, spoof.Length));
            }

            await server.WaitForStderrAsync("from 127.0.0.2:", Deadline);
            Assert.DoesNotContain("6.6.6.6", server.StandardErrorText, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_trusted_peer_without_a_header_or_too_slow_with_one_is_refused_with_the_reason()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--proxy-protocol", "--proxy-from", "127.0.0.0/8", "--proxy-timeout", "300ms");
        await using (server)
        {
            using (var plain = await ConnectFromAsync("127.0.0.1", port))
            {
                await plain.SendAsync("hello\n"u8.ToArray());
                Assert.Empty(await ReceiveToEndAsync(plain)); // no greeting: refused before it
            }

            await server.WaitForStderrAsync("refused: proxy: no PROXY header: first bytes look like \"hello\\n\"", Deadline);

            using (var slow = await ConnectFromAsync("127.0.0.1", port))
            {
                await slow.SendAsync("PROXY TCP4 192.0.2.1"u8.ToArray());
                Assert.Empty(await ReceiveToEndAsync(slow));
            }

            await server.WaitForStderrAsync("refused: proxy: prefix not complete within 300ms", Deadline);
        }
    }

    [Fact]
    public async Task Access_rules_and_per_address_limits_judge_the_real_client_not_the_balancer()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--proxy-protocol", "--proxy-from", "127.0.0.1/32",
            "--allow", "198.51.100.0/24", "--deny", "198.51.100.66/32", "--max-per-address", "1");
        await using (server)
        {
            // The balancer (127.0.0.1) is in no --allow range: its connections are judged by the client they carry.
            using var first = await ConnectFromAsync("127.0.0.1", port);
            await first.SendAsync(Encoding.ASCII.GetBytes("PROXY TCP4 198.51.100.7 10.0.0.1 5000 8888\r\n"));
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(first, GreetingBytes.Length));

            using (var second = await ConnectFromAsync("127.0.0.1", port)) // the same client again: over --max-per-address 1
            {
                await second.SendAsync(Encoding.ASCII.GetBytes("PROXY TCP4 198.51.100.7 10.0.0.1 5001 8888\r\n"));
                Assert.Empty(await ReceiveToEndAsync(second));
            }

            using (var denied = await ConnectFromAsync("127.0.0.1", port))
            {
                await denied.SendAsync(Encoding.ASCII.GetBytes("PROXY TCP4 198.51.100.66 10.0.0.1 5002 8888\r\n"));
                Assert.Empty(await ReceiveToEndAsync(denied));
            }

            using (var other = await ConnectFromAsync("127.0.0.1", port)) // another client: its own count
            {
                await other.SendAsync(Encoding.ASCII.GetBytes("PROXY TCP4 198.51.100.8 10.0.0.1 5003 8888\r\n"));
                Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(other, GreetingBytes.Length));
            }

            await server.WaitForStderrAsync("refused: access: over --max-per-address 1", Deadline);
            await server.WaitForStderrAsync("refused: access: --deny 198.51.100.66/32", Deadline);
        }
    }

    [Fact]
    public async Task Connect_and_bench_send_the_header_a_balancer_would()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--proxy-protocol", "--proxy-from", "127.0.0.1/32");
        await using (server)
        {
            string target = port.ToString(System.Globalization.CultureInfo.InvariantCulture);
            var v2 = await ChildProcess.RunAsync(TimeSpan.FromSeconds(20), null, "connect", "127.0.0.1", target,
                "--proxy-protocol", "v2", "--proxy-source", "192.0.2.44:4444", "--send", "as a balancer\\n");
            Assert.True(v2.ExitCode == 0, v2.ToString());
            Assert.EndsWith("as a balancer\n", v2.StdoutText, StringComparison.Ordinal);
            await server.WaitForStderrAsync("from 192.0.2.44:4444 closed", Deadline);

            var v1 = await ChildProcess.RunAsync(TimeSpan.FromSeconds(20), null, "connect", "127.0.0.1", target, "--proxy-protocol", "v1", "--send", "v1\\n");
            Assert.True(v1.ExitCode == 0, v1.ToString());
            Assert.EndsWith("v1\n", v1.StdoutText, StringComparison.Ordinal);

            foreach (string[] mode in new[] { new[] { "-c", "4", "--proxy-protocol", "v2" }, ["-c", "2", "--reconnect", "--proxy-protocol", "v1"] })
            {
                var bench = await ChildProcess.RunAsync(TimeSpan.FromSeconds(30), null, ["bench", $"127.0.0.1:{port}", "-t", "500ms", "--warmup", "100ms", .. mode]);
                Assert.True(bench.ExitCode == 0, bench.ToString());
                Assert.Matches(@"errors 0   mismatches 0", bench.StdoutText);
            }

            Assert.DoesNotContain("refused: proxy", server.StandardErrorText, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData("--proxy-source goes with --proxy-protocol", "connect", "127.0.0.1", "9", "--proxy-source", "1.2.3.4:5")]
    [InlineData("invalid --proxy-protocol value 'v3'", "connect", "127.0.0.1", "9", "--proxy-protocol", "v3")]
    [InlineData("--proxy-protocol is for TCP connections", "bench", "127.0.0.1:9", "--udp", "--proxy-protocol", "v2")]
    public Task Client_proxy_flags_are_checked(string expected, params string[] args) =>
        ServeProcessTests.AssertUsageErrorAsync(expected, args);

    [Theory]
    [InlineData("--proxy-protocol needs --proxy-from", "--proxy-protocol")]
    [InlineData("--proxy-from and --proxy-timeout go with --proxy-protocol", "--proxy-from", "127.0.0.1")]
    public Task Proxy_flags_are_checked(string expected, params string[] args) =>
        ServeProcessTests.AssertUsageErrorAsync(expected, ["serve", .. args]);
}

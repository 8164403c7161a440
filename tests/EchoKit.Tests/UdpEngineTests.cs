using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// The batched datagram engine (recvmmsg/sendmmsg loops, one SO_REUSEPORT socket per loop) and the portable
/// Socket loop it replaces on Linux: the same behaviour from both, the port closed to intruders, buffers sized
/// as asked, and the kernel's own drops counted.
/// </summary>
public sealed class UdpEngineTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);

    private static string[] EngineArgs(string engine)
    {
        Assert.SkipWhen(engine == "epoll" && !EchoServer.EpollSupported, "the batched engine runs on Linux x86-64 only");
        return ["--engine", engine];
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Both_engines_echo_the_largest_datagram_print_payloads_drop_cut_ones_and_sum_up_at_stop(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync(["--udp", "--max-datagram", "60000", "--udp-rate", "0", .. EngineArgs(engine)]);
        await using (server)
        {
            var target = new IPEndPoint(IPAddress.IPv6Loopback, port);
            using var client = UdpTests.UdpClient(IPAddress.IPv6Loopback);
            await client.SendToAsync(new byte[60_001], target); // one byte over: cut by the kernel, never echoed cut
            var largest = ServeProcessTests.RandomBytes(60_000);
            largest[0] = (byte)'<';
            await client.SendToAsync(largest, target);
            Assert.Equal(largest, await UdpTests.ReceiveDatagramAsync(client, Deadline));

            await client.SendToAsync("to stdout\n"u8.ToArray(), target);
            Assert.Equal("to stdout\n"u8.ToArray(), await UdpTests.ReceiveDatagramAsync(client, Deadline));
            await server.WaitForStdoutAsync(60_000 + 10, Deadline);

            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            Assert.Contains("udp: 2 datagrams echoed", server.StandardErrorText, StringComparison.Ordinal);
            Assert.Contains("1 dropped as larger than 60000 bytes", server.StandardErrorText, StringComparison.Ordinal);
            Assert.True(server.StandardOutputBytes.AsSpan().EndsWith("to stdout\n"u8), "the payloads reach stdout");
        }
    }

    [Fact]
    public async Task Each_loop_has_its_own_socket_on_the_port_and_every_flow_is_answered()
    {
        Assert.SkipUnless(EchoServer.EpollSupported, "the batched engine runs on Linux x86-64 only");
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--udp-rate", "0", "--loops", "3");
        await using (server)
        {
            string listening = await server.WaitForStderrAsync("listening on udp", Deadline);
            Assert.Contains("(3 loops, SO_REUSEPORT)", listening, StringComparison.Ordinal);
            Assert.Equal(3, UdpSocketsOf(server.Pid, port));

            // 50 flows (source ports), 20 datagrams each, from whichever CPU the scheduler runs us on: every one back.
            var flows = Enumerable.Range(0, 50).Select(_ => UdpTests.UdpClient(IPAddress.Loopback)).ToArray();
            try
            {
                foreach (var flow in flows)
                {
                    flow.Connect(new IPEndPoint(IPAddress.Loopback, port));
                }

                for (int round = 0; round < 20; round++)
                {
                    await Task.WhenAll(flows.Select(async (flow, i) =>
                    {
                        byte[] datagram = BitConverter.GetBytes((i * 1000) + round);
                        await flow.SendAsync(datagram);
                        Assert.Equal(datagram, await UdpTests.ReceiveDatagramAsync(flow, Deadline));
                    }));
                }
            }
            finally
            {
                foreach (var flow in flows)
                {
                    flow.Dispose();
                }
            }
        }
    }

    /// <summary>UDP sockets of <paramref name="pid"/> bound to <paramref name="port"/> (ss, as an operator would look).</summary>
    private static int UdpSocketsOf(int pid, int port)
    {
        var ss = Process.Start(new ProcessStartInfo("ss", ["-Hulnp", $"sport = :{port}"]) { RedirectStandardOutput = true })!;
        string output = ss.StandardOutput.ReadToEnd();
        ss.WaitForExit();
        return output.Split('\n').Count(line => line.Contains($"pid={pid},", StringComparison.Ordinal));
    }

    [Fact]
    public async Task The_port_is_closed_to_other_sockets_a_same_user_SO_REUSEPORT_socket_gets_nothing_and_one_loop_takes_no_group()
    {
        Assert.SkipUnless(EchoServer.EpollSupported, "the batched engine runs on Linux x86-64 only");
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--udp-rate", "0", "--loops", "2");
        await using (server)
        {
            // SO_REUSEADDR alone: refused, as before the group existed.
            using (var thief = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp))
            {
                thief.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true); // .NET sets SO_REUSEPORT too
                thief.SetRawSocketOption(1, 15 /* SO_REUSEPORT */, BitConverter.GetBytes(0));
                var e = Assert.Throws<SocketException>(() => thief.Bind(new IPEndPoint(IPAddress.Loopback, port)));
                Assert.Equal(SocketError.AddressAlreadyInUse, e.SocketErrorCode);
            }

            // Another user with SO_REUSEPORT: the kernel keeps a group to one user.
            if (Environment.UserName == "root")
            {
                var other = await ChildProcess.RunProgramAsync("setpriv", ExitDeadline, null, "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                    $"import socket; s=socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(('::', {port}))");
                Assert.NotEqual(0, other.ExitCode);
                Assert.Contains("Address already in use", other.Stderr, StringComparison.Ordinal);
            }

            // Our own user with SO_REUSEPORT joins the group, but the steering program never picks it.
            using var intruder = new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp) { DualMode = true };
            intruder.SetRawSocketOption(1, 15 /* SO_REUSEPORT */, BitConverter.GetBytes(1));
            intruder.Bind(new IPEndPoint(IPAddress.IPv6Any, port));
            var flows = Enumerable.Range(0, 20).Select(_ => UdpTests.UdpClient(IPAddress.Loopback)).ToArray();
            try
            {
                for (int round = 0; round < 10; round++)
                {
                    await Task.WhenAll(flows.Select(async flow =>
                    {
                        await flow.SendToAsync("mine"u8.ToArray(), new IPEndPoint(IPAddress.Loopback, port));
                        Assert.Equal("mine"u8.ToArray(), await UdpTests.ReceiveDatagramAsync(flow, Deadline));
                    }));
                }
            }
            finally
            {
                foreach (var flow in flows)
                {
                    flow.Dispose();
                }
            }

            Assert.Equal(0, intruder.Available);
        }

        var (single, singlePort) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--loops", "1");
        await using (single)
        {
            using var joiner = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            joiner.SetRawSocketOption(1, 15 /* SO_REUSEPORT */, BitConverter.GetBytes(1));
            var e = Assert.Throws<SocketException>(() => joiner.Bind(new IPEndPoint(IPAddress.Loopback, singlePort)));
            Assert.Equal(SocketError.AddressAlreadyInUse, e.SocketErrorCode);
        }
    }

    [Fact]
    public async Task Udp_rcvbuf_sizes_every_socket_and_a_full_queue_is_counted_as_kernel_drops()
    {
        Assert.SkipUnless(Environment.UserName == "root", "a buffer past net.core.rmem_max needs CAP_NET_ADMIN");
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--udp-rate", "0", "--udp-rcvbuf", "6m", "--loops", "2");
        await using (server)
        {
            Assert.Equal(2 * 6 * 1024 * 1024, ReceiveBufferOf(port)); // the kernel reports twice what it grants

            server.Signal(19); // SIGSTOP: nothing reads; the queue fills and the kernel drops the rest
            await ProcStats.WaitUntilAsync(() => ProcStats.IsStopped(server.Pid), Deadline, () => "the server did not stop");
            using var client = UdpTests.UdpClient(IPAddress.Loopback);
            var datagram = new byte[8_000];
            for (int i = 0; i < 2_000; i++) // 16 MB into a 6 MiB queue, far more than it holds
            {
                await client.SendToAsync(datagram, new IPEndPoint(IPAddress.Loopback, port));
            }

            server.Signal(18); // SIGCONT
            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            var summary = System.Text.RegularExpressions.Regex.Match(server.StandardErrorText, @"(\d+) dropped by the kernel with the receive queue full");
            Assert.True(summary.Success, server.StandardErrorText);
            Assert.InRange(int.Parse(summary.Groups[1].Value, CultureInfo.InvariantCulture), 1, 2_000);
        }
    }

    /// <summary>The receive buffer ss reports (skmem rb) for the socket on <paramref name="port"/>.</summary>
    private static int ReceiveBufferOf(int port)
    {
        var ss = Process.Start(new ProcessStartInfo("ss", ["-Hulmn", $"sport = :{port}"]) { RedirectStandardOutput = true })!;
        string output = ss.StandardOutput.ReadToEnd();
        ss.WaitForExit();
        var sizes = System.Text.RegularExpressions.Regex.Matches(output, @"rb(\d+)").Select(m => int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture)).Distinct().ToArray();
        Assert.True(sizes.Length == 1, output);
        return sizes[0];
    }

    [Fact]
    public async Task A_buffer_size_that_is_not_a_size_is_a_usage_error_and_needs_udp()
    {
        await ServeProcessTests.AssertUsageErrorAsync("invalid --udp-rcvbuf value '4q'", ["serve", "--udp", "--udp-rcvbuf", "4q"]);
        await ServeProcessTests.AssertUsageErrorAsync("invalid --udp-sndbuf value '2g'", ["serve", "--udp", "--udp-sndbuf", "2g"]);
        await ServeProcessTests.AssertUsageErrorAsync("--udp-rcvbuf needs --udp", ["serve", "--udp-rcvbuf", "1m"]);
    }
}

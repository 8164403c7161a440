using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

// What counts as activity: bytes moving either way (a slow reader is not idle), bytes waiting in the kernel
// after a stall, and bytes after a TCP urgent mark.
public sealed partial class ReliabilityTests
{
    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task A_client_that_reads_its_echo_slowly_is_not_closed_as_idle(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--no-greeting", "--idle-timeout", "1s");
        await using var _ = server;
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 64 * 1024 };
        await client.ConnectAsync(System.Net.IPAddress.Loopback, port).WaitAsync(Deadline);

        // 6 MB out at once; read back 64 KiB every 50 ms (~1.3 MB/s): the server spends seconds blocked on sending
        // after it has received the last byte, which is backpressure, not idleness.
        var payload = ServeProcessTests.RandomBytes(6 << 20);
        var sending = client.SendAsync(payload);
        var echoed = new byte[payload.Length];
        int total = 0;
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (total < echoed.Length)
        {
            int n = await client.ReceiveAsync(echoed.AsMemory(total, Math.Min(64 * 1024, echoed.Length - total))).AsTask().WaitAsync(until - DateTime.UtcNow);
            Assert.True(n > 0, $"closed after {total} of {payload.Length} bytes; stderr:\n{server.StandardErrorText}");
            total += n;
            await Task.Delay(50); // the slow reader under test
        }

        await sending.WaitAsync(Deadline);
        Assert.Equal(payload, echoed);

        // Once everything is echoed the connection is idle for real: an idle timeout after that (a slow machine
        // taking a second to get here) is right. One while the echo was still going out would say fewer bytes out.
        var idle = server.StandardErrorText.Split('\n').Where(l => l.Contains("idle timeout", StringComparison.Ordinal)).ToList();
        Assert.All(idle, l => Assert.Contains($"{payload.Length} bytes in, {payload.Length} bytes out", l, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task After_a_stall_longer_than_the_idle_timeout_busy_connections_are_kept(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--no-greeting", "--idle-timeout", "2s", "--max-connections", "0");
        await using var _ = server;
        const int Count = 300;
        var clients = await Task.WhenAll(Enumerable.Range(0, Count).Select(_ => ConnectAsync(port)));
        try
        {
            // Every client is accepted, then has a message waiting in the kernel while the server is stopped.
            await server.WaitForStderrAsync($"connection {Count} accepted", Deadline);
            server.Signal(19); // SIGSTOP
            await ProcStats.WaitUntilAsync(() => ProcStats.IsStopped(server.Pid), Deadline, () => "the server never stopped");
            foreach (var client in clients)
            {
                await client.SendAsync("ping"u8.ToArray());
            }

            await Task.Delay(3000); // the stall under test: longer than the idle timeout
            server.Signal(18); // SIGCONT
            try
            {
                foreach (var client in clients)
                {
                    Assert.Equal("ping"u8.ToArray(), await ReceiveExactlyAsync(client, 4));
                    await client.SendAsync("pong"u8.ToArray());
                    Assert.Equal("pong"u8.ToArray(), await ReceiveExactlyAsync(client, 4));
                }
            }
            catch (EchoKit.Client.PeerClosedException e)
            {
                await Task.Delay(1000); // diagnostics only: let the server's stderr catch up
                Assert.Fail($"{e.Message}; stderr:\n{string.Join('\n', server.StandardErrorText.Split('\n').Where(l => !l.Contains("accepted", StringComparison.Ordinal)).Take(8))}");
            }

            Assert.DoesNotContain("idle timeout", server.StandardErrorText, StringComparison.Ordinal);
        }
        finally
        {
            foreach (var client in clients)
            {
                client.Dispose();
            }
        }
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Bytes_after_a_TCP_urgent_byte_are_echoed_and_the_urgent_byte_too(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--no-greeting");
        await using var _ = server;
        for (int round = 0; round < 20; round++)
        {
            using var client = await ConnectAsync(port);
            // Corked, so that the bytes before the mark, the urgent byte and those after it reach the server
            // together: a read stops at the mark, and the rest must still be read.
            client.SetRawSocketOption(6 /* IPPROTO_TCP */, 3 /* TCP_CORK */, BitConverter.GetBytes(1));
            client.Send("before"u8);
            client.Send("!"u8, SocketFlags.OutOfBand);
            client.Send("after"u8);
            client.SetRawSocketOption(6, 3, BitConverter.GetBytes(0));
            Assert.Equal("before!after"u8.ToArray(), await ReceiveExactlyAsync(client, 12, TimeSpan.FromSeconds(5)));
        }
    }
}

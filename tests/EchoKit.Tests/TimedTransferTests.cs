using System.Net;
using System.Net.Sockets;
using EchoKit.Client;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary><see cref="TimedTransfer"/>'s send timeout means "no progress for X", as its message says.</summary>
public sealed class TimedTransferTests
{
    private static async Task<(Socket Client, Socket Server)> PairAsync()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { ReceiveBufferSize = 64 * 1024 };
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { SendBufferSize = 64 * 1024 };
        await client.ConnectAsync(listener.LocalEndPoint!).WaitAsync(Deadline);
        var server = await listener.AcceptAsync().WaitAsync(Deadline);
        return (client, server);
    }

    [Fact]
    public async Task A_slow_but_steady_reader_never_trips_the_send_timeout_however_long_the_send()
    {
        var (client, server) = await PairAsync();
        using var _ = client;
        using var __ = server;
        var data = new byte[8 << 20];
        // The reader takes 128 KiB every 50 ms (~2.5 MB/s): 8 MiB need about 3 s, three times the timeout.
        var reading = Task.Run(async () =>
        {
            var buffer = new byte[128 * 1024];
            long total = 0;
            while (total < data.Length)
            {
                int n = await server.ReceiveAsync(buffer);
                if (n == 0)
                {
                    break;
                }

                total += n;
                await Task.Delay(50); // the slow reader under test
            }

            return total;
        });

        var started = DateTime.UtcNow;
        await TimedTransfer.SendAsync(client, data, TimeSpan.FromSeconds(1));
        Assert.True(DateTime.UtcNow - started > TimeSpan.FromSeconds(1), "the send was not held up: the test proves nothing");
        Assert.Equal(data.Length, await reading.WaitAsync(Deadline));
    }

    [Fact]
    public async Task A_peer_that_stops_reading_trips_the_send_timeout()
    {
        var (client, server) = await PairAsync();
        using var _ = client;
        using var __ = server;
        var e = await Assert.ThrowsAsync<TransferTimeoutException>(async () =>
            await TimedTransfer.SendAsync(client, new byte[64 << 20], TimeSpan.FromMilliseconds(500)).AsTask().WaitAsync(Deadline));
        Assert.Contains("no progress for 500ms", e.Message, StringComparison.Ordinal);
    }
}

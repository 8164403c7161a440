using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

// Idle and send timeouts.
public sealed partial class ReliabilityTests
{
    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Idle_timeout_reaps_a_silent_connection_between_D_and_2D_and_spares_one_that_sends_every_D_over_4(string engine)
    {
        var idle = TimeSpan.FromMilliseconds(1500);
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--idle-timeout", "1500ms");
        await using (server)
        {
            var started = DateTime.UtcNow;
            using var silent = await ConnectAsync(port);
            using var chatty = await ConnectAsync(port);
            await ReceiveExactlyAsync(chatty, GreetingBytes.Length);

            // The silent one only receives (the greeting): what the server sends is no activity.
            var silentEnd = Task.Run(async () =>
            {
                await ReceiveToEndAsync(silent, TimeSpan.FromSeconds(10));
                return DateTime.UtcNow - started;
            });

            while (DateTime.UtcNow - started < idle * 2.5)
            {
                await AssertEchoesAsync(chatty, 1);
                await Task.Delay(idle / 4);
            }

            var lifetime = await silentEnd;
            Assert.InRange(lifetime, idle, idle * 2);
            await AssertEchoesAsync(chatty, 1); // still open after 2.5·D
            await server.WaitForStderrAsync("closed: idle timeout", Deadline);
            chatty.Dispose();
            await StopAsync(server);
        }
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Send_timeout_resets_a_client_that_stops_reading(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--no-greeting", "--send-timeout", "1s");
        await using (server)
        {
            using var hog = await ConnectAsync(port);
            var chunk = new byte[1 << 20];
            var pushing = Task.Run(async () =>
            {
                try
                {
                    for (int i = 0; i < 256; i++)
                    {
                        await hog.SendAsync(chunk); // fills every buffer, then blocks until the server gives up
                    }

                    return (SocketError?)null;
                }
                catch (SocketException e)
                {
                    return e.SocketErrorCode;
                }
            });

            await server.WaitForStderrAsync("closed: send timeout", Deadline);
            Assert.Equal(SocketError.ConnectionReset, await pushing.WaitAsync(Deadline));

            using (var other = await ConnectAsync(port))
            {
                await AssertEchoesAsync(other);
            }

            await StopAsync(server);
        }
    }
}

using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary><c>--health-port</c>: "ok" while serving, and closed first at the stop while connections drain.</summary>
public sealed class HealthPortTests
{
    [Fact]
    public async Task The_health_port_answers_ok_while_serving_and_refuses_once_the_drain_begins()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--health-port", "0", "--shutdown-timeout", "10s");
        await using (server)
        {
            string line = await server.WaitForStderrAsync("(health: answers ok while serving)", Deadline);
            int health = ChildProcess.PortOf(line[..line.IndexOf(" (", StringComparison.Ordinal)]);
            await server.WaitForStderrAsync("ready: serving", Deadline);
            using (var check = await ConnectAsync(health))
            {
                Assert.Equal("ok\n"u8.ToArray(), await ReceiveToEndAsync(check));
            }

            using var busy = await ConnectAsync(port); // keeps the drain going: it never closes by itself
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(busy, GreetingBytes.Length));
            server.Signal(ChildProcess.SIGTERM);
            await server.WaitForStderrAsync("shutting down", Deadline);
            var refused = await Assert.ThrowsAsync<SocketException>(() => ConnectAsync(health));
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
            Assert.False(server.HasExited); // still draining the connection
            busy.Shutdown(SocketShutdown.Send);
            Assert.Equal(0, await server.WaitForExitAsync(TimeSpan.FromSeconds(20)));
        }
    }
}

using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

// What goes where: payload bytes to stdout, events to stderr, nothing with --quiet.
public sealed partial class ServeProcessTests
{
    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Received_bytes_go_raw_to_stdout_and_events_to_stderr(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine);
        await using (server)
        {
            byte[] payload = [0, 1, 2, 0xFF, 0xFB, (byte)'h', (byte)'i', (byte)'\n'];
            using (var client = await ConnectAsync(port))
            {
                await ReceiveExactlyAsync(client, GreetingBytes.Length);
                await client.SendAsync(payload);
                Assert.Equal(payload, await ReceiveExactlyAsync(client, payload.Length));
                client.Shutdown(SocketShutdown.Send);
                Assert.Empty(await ReceiveToEndAsync(client));
            }

            await server.WaitForStderrAsync("closed: closed by peer, 8 bytes in, 189 bytes out", Deadline);
            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            Assert.Equal(payload, server.StandardOutputBytes);
            Assert.Contains("accepted from 127.0.0.1:", server.StandardErrorText, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Quiet_prints_nothing_to_stdout()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--no-greeting");
        await using (server)
        {
            using (var client = await ConnectAsync(port))
            {
                await client.SendAsync("abc"u8.ToArray());
                Assert.Equal("abc"u8.ToArray(), await ReceiveExactlyAsync(client, 3));
            }

            await server.WaitForStderrAsync("closed:", Deadline);
            server.Signal(ChildProcess.SIGINT);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            Assert.Empty(server.StandardOutputBytes);
        }
    }
}

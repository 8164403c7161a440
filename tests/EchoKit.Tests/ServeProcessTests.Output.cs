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

    /// <summary>--log-format json: every stderr line one JSON object with the text line's fields and the event's own.</summary>
    [Fact]
    public async Task Log_format_json_writes_one_object_a_line_with_the_events_fields()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--log-format", "json");
        await using (server)
        {
            int clientPort;
            using (var client = await ConnectAsync(port))
            {
                clientPort = ((System.Net.IPEndPoint)client.LocalEndPoint!).Port;
                await ReceiveExactlyAsync(client, GreetingBytes.Length);
                await client.SendAsync("\u001b]2;owned\u0007\n"u8.ToArray());
                await ReceiveExactlyAsync(client, 11);
            }

            await server.WaitForStderrAsync("\"reason\":\"closed by peer\"", Deadline);
            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            var lines = server.StandardErrorText.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.True(lines.Length >= 5, server.StandardErrorText);
            var events = lines.Select(line => System.Text.Json.JsonDocument.Parse(line).RootElement).ToArray();
            foreach (var e in events)
            {
                Assert.True(DateTime.TryParse(e.GetProperty("time").GetString(), System.Globalization.CultureInfo.InvariantCulture, out _));
                Assert.Equal("echokit", e.GetProperty("category").GetString());
                Assert.NotEmpty(e.GetProperty("message").GetString()!);
                Assert.True(e.GetProperty("event").GetInt32() >= 0);
            }

            var closed = Assert.Single(events, e => e.GetProperty("event").GetInt32() == 3);
            Assert.Equal("info", closed.GetProperty("level").GetString());
            Assert.Equal($"127.0.0.1:{clientPort}", closed.GetProperty("peer").GetString());
            Assert.Equal(11, closed.GetProperty("bytesIn").GetInt64());
            Assert.Equal(GreetingBytes.Length + 11, closed.GetProperty("bytesOut").GetInt64());
            Assert.Contains(events, e => e.GetProperty("message").GetString()!.StartsWith("listening on ", StringComparison.Ordinal));
            Assert.DoesNotContain("\u001b", server.StandardErrorText, StringComparison.Ordinal); // no colour, nothing raw
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

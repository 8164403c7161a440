using System.Net.Sockets;
using System.Text;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// Running under systemd: sd_notify to a NOTIFY_SOCKET the test makes (a Unix datagram socket, as systemd's is),
/// which must hear READY=1 first, the connection count, the watchdog, and STOPPING=1 at the drain.
/// </summary>
public sealed class SystemdTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("echokit-systemd-");

    public void Dispose() => _dir.Delete(recursive: true);

    private static async Task<(ChildProcess Server, int Port)> StartWithEnvironmentAsync(string[] environment, params string[] args)
    {
        var server = ChildProcess.StartProgram("env", [.. environment, .. ChildProcess.Echokit(["serve", "--port", "0", .. args])]);
        string line = await server.WaitForStderrAsync("listening on", Deadline);
        return (server, ChildProcess.PortOf(line));
    }

    private static async Task<string> NextMessageAsync(Socket notify)
    {
        var buffer = new byte[4096];
        using var cts = new CancellationTokenSource(Deadline);
        int n = await notify.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
        return Encoding.UTF8.GetString(buffer, 0, n);
    }

    private static async Task<string> MessageContainingAsync(Socket notify, string text, List<string> seen)
    {
        while (true)
        {
            string message = await NextMessageAsync(notify);
            seen.Add(message);
            if (message.Contains(text, StringComparison.Ordinal))
            {
                return message;
            }
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Notify_socket_hears_ready_first_then_status_and_watchdog_then_stopping(bool abstractName)
    {
        string name = abstractName ? $"@echokit-test-{Environment.ProcessId}-{Guid.NewGuid():N}" : Path.Combine(_dir.FullName, "notify");
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(abstractName ? "\0" + name[1..] : name));
        var (server, port) = await StartWithEnvironmentAsync([$"NOTIFY_SOCKET={name}", "WATCHDOG_USEC=200000"], "--quiet");
        await using (server)
        {
            var seen = new List<string>();
            string first = await NextMessageAsync(notify);
            seen.Add(first);
            Assert.Equal("READY=1\nSTATUS=serving 0 connections", first);
            await MessageContainingAsync(notify, "WATCHDOG=1", seen);
            using (var client = await ConnectAsync(port))
            {
                await ReceiveExactlyAsync(client, GreetingBytes.Length);
                await MessageContainingAsync(notify, "STATUS=serving 1 connection", seen);
                server.Signal(ChildProcess.SIGTERM);
                string stopping = await MessageContainingAsync(notify, "STOPPING=1", seen);
                Assert.Equal("STOPPING=1\nSTATUS=stopping: draining 1 connection", stopping);
            }

            Assert.Equal(0, await server.WaitForExitAsync(TimeSpan.FromSeconds(20)));
            Assert.Single(seen, m => m.Contains("READY=1", StringComparison.Ordinal));
            Assert.True(seen.Count(m => m == "WATCHDOG=1") >= 1, string.Join(" | ", seen));
            Assert.DoesNotContain("sd_notify", server.StandardErrorText, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_notify_socket_nobody_listens_on_is_one_warning_and_the_server_serves()
    {
        string missing = Path.Combine(_dir.FullName, "nobody");
        var (server, port) = await StartWithEnvironmentAsync([$"NOTIFY_SOCKET={missing}", "WATCHDOG_USEC=100000"], "--quiet");
        await using (server)
        {
            await server.WaitForStderrAsync("sd_notify to", Deadline);
            using var client = await ConnectAsync(port);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            await Task.Delay(300); // three watchdog ticks that fail too: still one warning
            Assert.Equal(1, server.StandardErrorText.Split('\n').Count(l => l.Contains("sd_notify to", StringComparison.Ordinal)));
            Assert.Contains("No such file or directory (ENOENT)", server.StandardErrorText, StringComparison.Ordinal);
        }
    }
}

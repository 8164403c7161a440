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

    private static void SkipWithoutSocketActivate() =>
        Assert.SkipUnless(File.Exists("/usr/bin/systemd-socket-activate"), "systemd-socket-activate is not installed (.ci/run installs systemd)");

    /// <summary>systemd-socket-activate listens, and on the first connection execs echokit with the socket as fd 3.</summary>
    [Fact]
    public async Task Socket_activation_serves_the_passed_stream_socket_from_its_first_connection_on()
    {
        SkipWithoutSocketActivate();
        int port = FreePort();
        await using var server = ChildProcess.StartProgram("systemd-socket-activate", ["-l", $"127.0.0.1:{port}", "--fdname=echo", .. ChildProcess.Echokit("serve", "--quiet")]);
        await WaitUntilListeningQuietlyAsync(port, Deadline);
        for (int i = 0; i < 2; i++) // the first connection starts the server, the second finds it serving
        {
            using var client = await ConnectAsync(port);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            await client.SendAsync("activated\n"u8.ToArray());
            Assert.Equal("activated\n"u8.ToArray(), await ReceiveExactlyAsync(client, 10));
        }

        await server.WaitForStderrAsync("socket activation: serving the 1 socket systemd passed (echo) instead of binding", Deadline);
        Assert.Contains($"listening on 127.0.0.1:{port}", server.StandardErrorText, StringComparison.Ordinal);
        server.Signal(ChildProcess.SIGTERM); // systemd-socket-activate has exec'd echokit: the same process
        Assert.Equal(0, await server.WaitForExitAsync(TimeSpan.FromSeconds(20)));
    }

    [Fact]
    public async Task Socket_activation_serves_a_passed_datagram_socket()
    {
        SkipWithoutSocketActivate();
        int port = FreePort();
        await using var server = ChildProcess.StartProgram("systemd-socket-activate", ["--datagram", "-l", $"127.0.0.1:{port}", .. ChildProcess.Echokit("serve", "--quiet")]);
        await server.WaitForStderrAsync("Listening on", Deadline); // systemd-socket-activate's own line
        using var client = UdpTests.UdpClient(System.Net.IPAddress.Loopback);
        var target = new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, port);
        await client.SendToAsync("wake up"u8.ToArray(), target);
        Assert.Equal("wake up", Encoding.ASCII.GetString(await UdpTests.ReceiveDatagramAsync(client, Deadline) ?? []));
        await client.SendToAsync("again"u8.ToArray(), target);
        Assert.Equal("again", Encoding.ASCII.GetString(await UdpTests.ReceiveDatagramAsync(client, Deadline) ?? []));
        await server.WaitForStderrAsync($"listening on udp 127.0.0.1:{port}", Deadline);
        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(TimeSpan.FromSeconds(20)));
    }

    /// <summary>Accept=yes (one process per connection, the socket a connected one) is refused with the reason.</summary>
    [Fact]
    public async Task Socket_activation_with_accept_yes_is_refused_with_the_reason()
    {
        SkipWithoutSocketActivate();
        int port = FreePort();
        await using var server = ChildProcess.StartProgram("systemd-socket-activate", ["--accept", "-l", $"127.0.0.1:{port}", .. ChildProcess.Echokit("serve", "--quiet")]);
        await WaitUntilListeningQuietlyAsync(port, Deadline);
        using var client = await ConnectAsync(port);
        Assert.Empty(await ReceiveToEndAsync(client));
        await server.WaitForStderrAsync("echokit: socket activation: descriptor 3 (of LISTEN_FDS=1) is a stream socket that is not listening", Deadline);
        await server.WaitForStderrAsync("died with code 3", Deadline);
        server.Signal(ChildProcess.SIGTERM);
    }

    /// <summary>The unit files in packaging/systemd pass systemd-analyze verify (with ExecStart pointed at this build).</summary>
    [Fact]
    public async Task The_packaged_unit_files_verify()
    {
        Assert.SkipUnless(File.Exists("/usr/bin/systemd-analyze"), "systemd-analyze is not installed (.ci/run installs systemd)");
        string packaging = Path.Combine(RepositoryRoot(), "packaging", "systemd");
        string[] echokit = ChildProcess.Echokit();
        foreach (string unit in new[] { "echokit.socket", "echokit.service" })
        {
            string text = File.ReadAllText(Path.Combine(packaging, unit));
            File.WriteAllText(Path.Combine(_dir.FullName, unit), text.Replace("/usr/local/bin/echokit", string.Join(' ', echokit), StringComparison.Ordinal));
        }

        Assert.Contains("ExecStart=/usr/local/bin/echokit serve", File.ReadAllText(Path.Combine(packaging, "echokit.service")), StringComparison.Ordinal);
        var verify = await ChildProcess.RunProgramAsync("systemd-analyze", TimeSpan.FromSeconds(30), null, "verify",
            Path.Combine(_dir.FullName, "echokit.socket"), Path.Combine(_dir.FullName, "echokit.service"));
        Assert.True(verify.ExitCode == 0 && verify.Stderr.Length == 0, verify.ToString());
    }

    private static string RepositoryRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "EchoKit.sln")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new InvalidOperationException("EchoKit.sln not found above " + AppContext.BaseDirectory);
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

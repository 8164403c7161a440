using System.Text;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// What the operator at the server's terminal sees and does: signals during the drain, SIGHUP, the
/// listening line at any log level, payload lines tied to their connection, a peer's escape sequences.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class OperatorTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task A_second_SIGTERM_during_the_drain_exits_at_once_and_says_so()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--shutdown-timeout", "60s");
        await using var _ = server;
        using var client = await ConnectAsync(port); // never closes: the drain would wait 60 s
        await ReceiveExactlyAsync(client, GreetingBytes.Length);
        server.Signal(ChildProcess.SIGTERM);
        await server.WaitForStderrAsync("shutting down", Deadline);
        var started = DateTime.UtcNow;
        server.Signal(ChildProcess.SIGINT);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(10));
        Assert.Contains("SIGINT (Ctrl+C) again during the graceful stop: exiting now", server.StandardErrorText, StringComparison.Ordinal);
        Assert.Contains("draining 1 connection (", server.StandardErrorText, StringComparison.Ordinal); // not "1 connections"
    }

    [Fact]
    public async Task SIGHUP_without_a_config_file_reloads_nothing_and_the_server_serves_on()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet");
        await using var _ = server;
        server.Signal(1); // SIGHUP: killed the process (exit 129) before
        await server.WaitForStderrAsync("SIGHUP: configuration reloaded: no setting changed", Deadline);
        using var client = await ConnectAsync(port);
        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
        server.Signal(ChildProcess.SIGTERM);
        client.Dispose();
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
    }

    [Fact]
    public async Task The_listening_line_with_the_chosen_port_shows_at_log_level_Warning()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--log-level", "Warning");
        await using var _ = server;
        Assert.InRange(port, 1, 65535);
        using var client = await ConnectAsync(port);
        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
        server.Signal(ChildProcess.SIGTERM);
        client.Dispose();
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        Assert.DoesNotContain("accepted", server.StandardErrorText, StringComparison.Ordinal); // still Warning otherwise
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task With_tag_each_payload_line_names_its_connection_and_comes_before_its_closed_line(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--tag", "--no-greeting", "--engine", engine);
        await using var _ = server;
        for (int i = 1; i <= 3; i++)
        {
            using var client = await ConnectAsync(port);
            var line = Encoding.ASCII.GetBytes($"line {i}\nmore {i}\n");
            await client.SendAsync(line);
            await ReceiveExactlyAsync(client, line.Length);
            client.Shutdown(System.Net.Sockets.SocketShutdown.Send);
            await ReceiveToEndAsync(client);
            await server.WaitForStderrAsync($"connection {i} from", Deadline);
            // The closed line is written only after the connection's bytes reached stdout.
            Assert.Contains($"[{i}] more {i}\n", Encoding.ASCII.GetString(server.StandardOutputBytes), StringComparison.Ordinal);
        }

        Assert.Equal("[1] line 1\n[1] more 1\n[2] line 2\n[2] more 2\n[3] line 3\n[3] more 3\n", Encoding.ASCII.GetString(server.StandardOutputBytes));
    }

    [Fact]
    public void Control_bytes_are_shown_as_cat_v_does_and_text_passes()
    {
        string Show(byte[] bytes, long? tag = null)
        {
            var output = new System.Buffers.ArrayBufferWriter<byte>();
            EchoKit.Cli.TerminalText.Format(bytes, escape: true, tag, output);
            return Encoding.UTF8.GetString(output.WrittenSpan);
        }

        Assert.Equal("^[]2;PWNED^G^[[2J", Show("\u001b]2;PWNED\u0007\u001b[2J"u8.ToArray()));
        Assert.Equal("tab\tline\n^M^@^?", Show("tab\tline\n\r\0\u007f"u8.ToArray()));
        Assert.Equal("héllo, 世界", Show("héllo, 世界"u8.ToArray()));
        Assert.Equal("M-^[[2J", Show([0xC2, 0x9B, (byte)'[', (byte)'2', (byte)'J'])); // U+009B, 8-bit CSI
        Assert.Equal("M-^[M-^?", Show([0x9B, 0xFF])); // not UTF-8
        Assert.Equal("[7] a\n[7] b\n", Show("a\nb"u8.ToArray(), tag: 7));
    }

    [Fact]
    public async Task On_a_terminal_a_peers_escape_sequences_are_shown_escaped()
    {
        // script(1) gives the server a pseudo-terminal for stdout and stderr; its own stdout carries what the terminal shows.
        string[] command = ChildProcess.Echokit("serve", "--port", "0", "--no-greeting");
        string line = string.Join(' ', command.Select(a => $"'{a}'"));
        await using var terminal = ChildProcess.StartProgram("script", "-q", "-f", "-e", "-c", line, "/dev/null");
        string screen = await WaitForScreenAsync(terminal, "listening on");
        int port = ChildProcess.PortOf(screen[screen.IndexOf("listening on", StringComparison.Ordinal)..].Split('\n')[0]);

        using var client = await ConnectAsync(port);
        var attack = "\u001b]2;PWNED\u0007\u001b[2Jhi\n"u8.ToArray();
        await client.SendAsync(attack);
        await ReceiveExactlyAsync(client, attack.Length); // the echo itself is exact
        screen = await WaitForScreenAsync(terminal, "^[]2;PWNED^G^[[2Jhi");
        Assert.DoesNotContain("\u001b]2;", screen, StringComparison.Ordinal);
    }

    private static async Task<string> WaitForScreenAsync(ChildProcess terminal, string text)
    {
        var until = DateTime.UtcNow + Deadline;
        while (true)
        {
            string screen = Encoding.UTF8.GetString(terminal.StandardOutputBytes);
            if (screen.Contains(text, StringComparison.Ordinal))
            {
                return screen;
            }

            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException($"the terminal never showed '{text}'; it shows:\n{screen}");
            }

            await terminal.WaitForStdoutAsync(Encoding.UTF8.GetByteCount(screen) + 1, until - DateTime.UtcNow);
        }
    }
}

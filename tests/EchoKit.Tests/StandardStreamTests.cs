using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// Closed, broken and stalled standard streams (the runtime reuses a closed descriptor number for its own
/// files): the server keeps echoing, warns once, keeps its drain deadline and exits 0; connect reads a
/// closed stdin as EOF.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class StandardStreamTests : IDisposable
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("echokit-stdio-");

    public void Dispose() => _dir.Delete(recursive: true);

    private static async Task<int> PortFromStderrAsync(ChildProcess server)
    {
        return ChildProcess.PortOf(await server.WaitForStderrAsync("listening on", Deadline));
    }

    /// <summary>Sends <paramref name="size"/> random bytes and checks that exactly they come back after the greeting.</summary>
    private static async Task AssertEchoesAsync(Socket client, int size)
    {
        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
        var payload = ServeProcessTests.RandomBytes(size);
        var receiving = ReceiveExactlyAsync(client, size);
        await client.SendAsync(payload);
        Assert.Equal(payload, await receiving);
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task With_stdout_closed_the_server_warns_once_echoes_everything_and_exits_0(string engine)
    {
        await using var server = ChildProcess.StartWithRedirections(">&-", "serve", "--port", "0", "--engine", engine);
        int port = await PortFromStderrAsync(server);
        await server.WaitForStderrAsync("stdout is closed", Deadline);

        // More than the payload queue holds (64 chunks): before the fix the writer died and its queue filled.
        var clients = new List<Socket>();
        for (int i = 0; i < 4; i++)
        {
            var client = await ConnectAsync(port);
            clients.Add(client);
            await AssertEchoesAsync(client, 8 * 1024 * 1024);
        }

        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        Assert.Single(server.StandardErrorText.Split('\n'), l => l.Contains("stdout", StringComparison.Ordinal));
        ServeProcessTests.NoStackTrace(server.StandardErrorText);
        clients.ForEach(c => c.Dispose());
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task With_stderr_closed_the_server_starts_echoes_and_exits_0(string engine)
    {
        string path = Path.Combine(_dir.FullName, "echo.sock");
        await using var server = ChildProcess.StartWithRedirections("2>&-", "serve", "--unix", path, "--engine", engine);

        // No stderr to say "listening": wait until the socket answers.
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        var until = DateTime.UtcNow + Deadline;
        while (true)
        {
            try
            {
                await client.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(path)).WaitAsync(Deadline);
                break;
            }
            catch (SocketException) when (DateTime.UtcNow < until && !server.HasExited)
            {
                await Task.Delay(50);
            }
        }

        await AssertEchoesAsync(client, 100_000);
        var printed = await server.WaitForStdoutAsync(100_000, Deadline); // payload still printed on stdout
        Assert.Equal(100_000, printed.Length);
        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
    }

    [Fact]
    public async Task A_stdout_pipe_whose_reader_has_gone_is_one_warning_and_echo_goes_on()
    {
        await using var server = ChildProcess.StartWithRedirections("> >(head -c 1 >/dev/null)", "serve", "--port", "0");
        int port = await PortFromStderrAsync(server);
        for (int i = 0; i < 3; i++)
        {
            using var client = await ConnectAsync(port);
            await AssertEchoesAsync(client, 256 * 1024);
        }

        await server.WaitForStderrAsync("stdout failed (Broken pipe (EPIPE)", Deadline);
        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        Assert.Single(server.StandardErrorText.Split('\n'), l => l.Contains("stdout failed", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task A_stalled_stdout_does_not_hold_the_exit_past_the_shutdown_timeout(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync(stdoutPaused: true, "--engine", engine, "--shutdown-timeout", "1s");
        await using var _ = server;
        using var client = await ConnectAsync(port);
        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));

        // Fill the stdout pipe (64 KiB) and the payload queue, so that the server waits on stdout.
        var payload = ServeProcessTests.RandomBytes(64 * 1024);
        using var sending = new CancellationTokenSource(TimeSpan.FromSeconds(3));
        try
        {
            for (int i = 0; i < 400; i++)
            {
                await client.SendAsync(payload, sending.Token);
            }
        }
        catch (OperationCanceledException)
        {
            // The server stopped reading: stdout is full, as wanted.
        }

        var started = DateTime.UtcNow;
        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        var took = DateTime.UtcNow - started;
        Assert.True(took < TimeSpan.FromSeconds(5), $"exit took {took.TotalSeconds:0.0} s with --shutdown-timeout 1s; stderr:\n{server.StandardErrorText}");
        Assert.Contains("stdout did not take the last received bytes", server.StandardErrorText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Connect_with_stdin_closed_sends_nothing_and_half_closes()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet");
        await using var _ = server;
        await using var client = ChildProcess.StartWithRedirections("<&-", "connect", "127.0.0.1", port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal(0, await client.WaitForExitAsync(ExitDeadline));
        Assert.Equal(GreetingBytes, client.StandardOutputBytes); // nothing sent, nothing echoed: stdin read as EOF
        await server.WaitForStderrAsync($"{GreetingBytes.Length} bytes out", Deadline);
        Assert.Contains("closed: closed by peer, 0 bytes in", server.StandardErrorText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Bench_with_stdout_and_stderr_closed_runs_and_exits_0()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet");
        await using var _ = server;
        await using var bench = ChildProcess.StartWithRedirections(">&- 2>&-", "bench", $"127.0.0.1:{port}", "-c", "2", "-t", "300ms", "--warmup", "0");
        Assert.Equal(0, await bench.WaitForExitAsync(ExitDeadline));
    }

    [Fact]
    public async Task Connect_with_stdout_closed_warns_and_still_completes()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet");
        await using var _ = server;
        await using var client = ChildProcess.StartWithRedirections(">&-", "connect", $"127.0.0.1:{port}", "--send", "hello", "-N");
        Assert.Equal(0, await client.WaitForExitAsync(ExitDeadline));
        Assert.Contains("stdout is closed", client.StandardErrorText, StringComparison.Ordinal);
        Assert.Contains($"received {GreetingBytes.Length + 5} bytes", client.StandardErrorText, StringComparison.Ordinal);
    }
}

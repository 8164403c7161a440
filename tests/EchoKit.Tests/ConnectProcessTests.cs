using System.Net;
using System.Net.Sockets;
using System.Text;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>The real <c>echokit connect</c> process against real servers on loopback.</summary>
public sealed class ConnectProcessTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(30);

    private static EchoServer StartEchoServer(bool greeting = true)
    {
        var server = new EchoServer(new EchoServerOptions { Port = 0, SendGreeting = greeting });
        server.Start();
        return server;
    }

    private static string Port(EchoServer server) => server.LocalEndPoints[0].Port.ToString(System.Globalization.CultureInfo.InvariantCulture);

    private static string Port(Socket listener) => ((IPEndPoint)listener.LocalEndPoint!).Port.ToString(System.Globalization.CultureInfo.InvariantCulture);

    private static Socket Listen(int backlog = 16)
    {
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(backlog);
        return listener;
    }

    [Fact]
    public async Task One_shot_sends_the_escaped_text_and_prints_exactly_what_came_back()
    {
        await using var server = StartEchoServer();
        byte[] sent = [(byte)'h', (byte)'i', (byte)'\r', (byte)'\n', (byte)'\t', 0, 0xFF, (byte)'\\'];
        var result = await ChildProcess.RunAsync(ExitDeadline, null,
            "connect", "127.0.0.1", Port(server), "--send", "hi\\r\\n\\t\\x00\\xff\\\\", "--expect", (181 + sent.Length).ToString(System.Globalization.CultureInfo.InvariantCulture));

        Assert.Equal(0, result.ExitCode);
        Assert.Equal([.. GreetingBytes, .. sent], result.Stdout);
        Assert.Contains("connected to 127.0.0.1:", result.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("::1", null)]
    [InlineData("[::1]", "PORT")]
    [InlineData("localhost", null)]
    public async Task One_shot_reaches_the_server_by_IPv6_literal_and_host_name_and_ends_when_the_echo_is_back(string host, string? portForm)
    {
        await using var server = StartEchoServer(greeting: false);
        string[] target = portForm is null ? [host, Port(server)] : [$"{host}:{Port(server)}"];
        var started = DateTime.UtcNow;
        var result = await ChildProcess.RunAsync(ExitDeadline, null, ["connect", .. target, "--send", "abc", "--wait", "30s"]);
        Assert.Equal(0, result.ExitCode);
        Assert.Equal("abc", result.StdoutText);
        Assert.Contains("the echo of what was sent came back", result.Stderr, StringComparison.Ordinal);
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(15), "waited for --wait although the echo was back");
    }

    [Fact]
    public async Task One_shot_to_a_server_that_answers_something_else_ends_after_the_wait()
    {
        int port = FreePort();
        await using var other = ChildProcess.StartProgram("socat", $"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "SYSTEM:echo other; sleep 10");
        await WaitUntilListeningAsync(port, ExitDeadline);
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "127.0.0.1", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--send", "abc", "--wait", "300ms");
        Assert.Equal(0, result.ExitCode);
        Assert.Equal("other\n", result.StdoutText);
        Assert.Contains("no data for 300ms", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task One_shot_with_half_close_ends_as_soon_as_the_server_closes()
    {
        await using var server = StartEchoServer();
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "127.0.0.1", Port(server), "--send", "bye\\n", "-N", "--wait", "20s");
        Assert.Equal(0, result.ExitCode);
        Assert.Equal([.. GreetingBytes, .. "bye\n"u8.ToArray()], result.Stdout);
        Assert.Contains("connection closed by peer", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Expecting_more_than_arrives_is_a_short_read_exit_8_with_what_did_arrive_printed()
    {
        await using var server = StartEchoServer(greeting: false);
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "127.0.0.1", Port(server), "--send", "abc", "--expect", "10", "--wait", "300ms");
        Assert.Equal(8, result.ExitCode);
        Assert.Equal("abc", result.StdoutText);
        Assert.Contains("expected 10 bytes, received 3", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Interactive_copies_stdin_to_the_socket_and_the_socket_to_stdout_then_half_closes_at_EOF()
    {
        await using var server = StartEchoServer();
        await using var client = ChildProcess.Start("connect", "127.0.0.1", Port(server));

        // The greeting arrives before we type anything: both directions run at once.
        Assert.Equal(GreetingBytes, await client.WaitForStdoutAsync(GreetingBytes.Length, Deadline));
        await client.StandardInput.WriteAsync("first line\n"u8.ToArray());
        await client.StandardInput.FlushAsync();
        Assert.EndsWith("first line\n", Encoding.ASCII.GetString(await client.WaitForStdoutAsync(GreetingBytes.Length + 11, Deadline)), StringComparison.Ordinal);

        var binary = new byte[200_000];
        Random.Shared.NextBytes(binary);
        await client.StandardInput.WriteAsync(binary);
        client.StandardInput.Close(); // EOF: the client shuts down its send side, the server echoes the rest and closes

        Assert.Equal(0, await client.WaitForExitAsync(ExitDeadline));
        Assert.Equal([.. GreetingBytes, .. "first line\n"u8.ToArray(), .. binary], client.StandardOutputBytes);
        Assert.Contains("connection closed by peer", client.StandardErrorText, StringComparison.Ordinal);
        Assert.DoesNotContain("connected", Encoding.ASCII.GetString(client.StandardOutputBytes), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Interactive_ends_with_exit_0_when_the_server_closes_first()
    {
        using var listener = Listen();
        await using var client = ChildProcess.Start("connect", "127.0.0.1", Port(listener));
        using (var accepted = await listener.AcceptAsync().WaitAsync(Deadline))
        {
            await accepted.SendAsync("goodbye\n"u8.ToArray());
            accepted.Shutdown(SocketShutdown.Both);
        }

        Assert.Equal(0, await client.WaitForExitAsync(ExitDeadline));
        Assert.Equal("goodbye\n", Encoding.ASCII.GetString(client.StandardOutputBytes));
    }

    [Fact]
    public async Task Connection_refused_is_ECONNREFUSED_and_exit_5()
    {
        string port;
        using (var listener = Listen())
        {
            port = Port(listener); // closed again: nobody listens there now
        }

        var result = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "127.0.0.1", port, "--send", "x");
        Assert.Equal(5, result.ExitCode);
        Assert.Equal($"echokit: connect to 127.0.0.1:{port} failed: Connection refused (ECONNREFUSED)", result.Stderr.Trim());
    }

    [Fact]
    public async Task An_unknown_host_is_exit_4_with_the_resolver_error()
    {
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "no-such-host.invalid", "8888", "--send", "x");
        Assert.Equal(4, result.ExitCode);
        string line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("echokit: cannot resolve no-such-host.invalid: ", line, StringComparison.Ordinal);
        ServeProcessTests.NoStackTrace(result.Stderr);
    }

    [Fact]
    public async Task A_connect_that_gets_no_answer_times_out_with_ETIMEDOUT_and_exit_6()
    {
        // A listener whose accept queue is full drops further SYNs, so the next connect hangs.
        using var listener = Listen(backlog: 0);
        var fillers = new List<Socket>();
        try
        {
            for (int i = 0; i < 8; i++)
            {
                var filler = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                fillers.Add(filler);
                using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
                try
                {
                    await filler.ConnectAsync((IPEndPoint)listener.LocalEndPoint!, cts.Token);
                }
                catch (OperationCanceledException)
                {
                    break; // this one hung: the queue is full
                }
            }

            var result = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "127.0.0.1", Port(listener), "--connect-timeout", "500ms", "--send", "x");
            Assert.Equal(6, result.ExitCode);
            Assert.Contains("failed: timed out after 500ms (ETIMEDOUT)", result.Stderr, StringComparison.Ordinal);
        }
        finally
        {
            fillers.ForEach(f => f.Dispose());
        }
    }

    [Fact]
    public async Task A_server_that_never_answers_hits_the_receive_timeout_exit_6()
    {
        using var listener = Listen();
        var run = ChildProcess.RunAsync(ExitDeadline, null, "connect", "127.0.0.1", Port(listener), "--send", "x", "--recv-timeout", "400ms", "--wait", "10s");
        using var accepted = await listener.AcceptAsync().WaitAsync(Deadline);
        var result = await run;
        Assert.Equal(6, result.ExitCode);
        Assert.Contains("receive timed out: no data for 400ms (ETIMEDOUT)", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_peer_reset_is_ECONNRESET_and_exit_7()
    {
        using var listener = Listen();
        var run = ChildProcess.RunAsync(ExitDeadline, null, "connect", "127.0.0.1", Port(listener), "--send", "hello", "--wait", "10s");
        using (var accepted = await listener.AcceptAsync().WaitAsync(Deadline))
        {
            await ReceiveExactlyAsync(accepted, 5);
            accepted.LingerState = new LingerOption(true, 0); // close → RST
        }

        var result = await run;
        Assert.Equal(7, result.ExitCode);
        Assert.Contains("Connection reset by peer (ECONNRESET)", result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_server_that_stops_reading_hits_the_send_timeout_exit_6()
    {
        using var listener = Listen();
        await using var client = ChildProcess.Start("connect", "127.0.0.1", Port(listener), "--send-timeout", "500ms");
        using var accepted = await listener.AcceptAsync().WaitAsync(Deadline);

        // Far more than the kernel buffers hold (10–15 MB per loopback connection here, at most ~70 MB); nobody reads it.
        var feed = Task.Run(async () =>
        {
            var chunk = new byte[1 << 20];
            try
            {
                for (int i = 0; i < 128 && !client.HasExited; i++)
                {
                    await client.StandardInput.WriteAsync(chunk);
                }
            }
            catch (IOException)
            {
                // The client exited and closed its stdin.
            }
        });

        Assert.Equal(6, await client.WaitForExitAsync(ExitDeadline));
        Assert.Contains("send timed out: no progress for 500ms (ETIMEDOUT)", client.StandardErrorText, StringComparison.Ordinal);
        await feed.WaitAsync(Deadline);
    }
}

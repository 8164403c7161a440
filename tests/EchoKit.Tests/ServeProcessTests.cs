using System.Net;
using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>The real <c>echokit serve</c> process: output, signals, restarts and bind errors.</summary>
public sealed class ServeProcessTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);

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
    public async Task Busy_polling_ends_with_the_traffic_so_an_idle_server_uses_no_CPU()
    {
        // Ping-pong on one connection is dense traffic: the epoll loop polls between messages instead of
        // sleeping. Once the messages stop (the connection stays open) it must go back to sleeping.
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--no-greeting", "--engine", "epoll", "--busy-poll", "2ms");
        await using (server)
        {
            using var client = await ConnectAsync(port);
            var message = new byte[64];
            for (int i = 0; i < 2000; i++)
            {
                await client.SendAsync(message);
                await ReceiveExactlyAsync(client, message.Length);
            }

            var before = ProcStats.CpuTime(server.Pid);
            await Task.Delay(TimeSpan.FromSeconds(1)); // the window measured, not a wait for something
            var used = ProcStats.CpuTime(server.Pid) - before;
            // A loop that kept polling would use ~1000 ms; the allowance is for the JIT's second tier, which may
            // still be compiling the hot methods of the traffic just before.
            Assert.True(used <= TimeSpan.FromMilliseconds(300), $"the idle server used {used.TotalMilliseconds} ms of CPU in 1 s (a loop that keeps polling uses ~1000)");

            await client.SendAsync(message); // and it still answers
            Assert.Equal(message, await ReceiveExactlyAsync(client, message.Length));
        }
    }

    [Fact]
    public async Task Connections_read_by_polling_under_dense_traffic_keep_half_close_backpressure_and_graceful_stop()
    {
        // Under dense traffic the epoll loop takes just-read connections out of epoll and reads them directly.
        // Two connections keep ping-ponging (dense traffic throughout) while the others, straight out of their
        // own ping-pong, half-close, flood a peer that does not read, and then meet SIGTERM.
        var (server, port) = await ChildProcess.StartServerAsync("--engine", "epoll", "--loops", "1", "--quiet", "--no-greeting", "--busy-poll", "2ms", "--log-level", "Debug");
        await using (server)
        {
            using var halfCloser = await ConnectAsync(port);
            using var flooded = await ConnectAsync(port);
            using var busy1 = await ConnectAsync(port);
            using var busy2 = await ConnectAsync(port);
            using var stop = new CancellationTokenSource();
            var pingPongs = new[] { busy1, busy2 }.Select(c => Task.Run(() => PingPongUntilAsync(c, stop.Token))).ToArray();

            await PingPongAsync(halfCloser, 500);
            var last = RandomBytes(100);
            await halfCloser.SendAsync(last);
            halfCloser.Shutdown(SocketShutdown.Send);
            Assert.Equal(last, await ReceiveToEndAsync(halfCloser));

            await PingPongAsync(flooded, 500);
            await FloodUntilStalledThenReadAllAsync(flooded, server);

            stop.Cancel();
            long rounds = (await Task.WhenAll(pingPongs)).Sum();
            Assert.True(rounds > 0);
            server.Signal(ChildProcess.SIGTERM);
            foreach (var c in new[] { flooded, busy1, busy2 })
            {
                Assert.Empty(await ReceiveToEndAsync(c)); // our FIN, after everything was echoed
            }

            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            var loop = System.Text.RegularExpressions.Regex.Match(server.StandardErrorText, @"event loop 0: (\d+) of (\d+) reads found their bytes by polling");
            Assert.True(loop.Success, server.StandardErrorText);
            Assert.True(long.Parse(loop.Groups[1].Value) > 0, $"no read was made by polling: {loop.Value}");
        }
    }

    /// <summary>
    /// Sends without reading until TCP stops taking bytes (the server must then have stopped reading),
    /// then reads everything back in order. The flood is far more than the kernel can hold on this path:
    /// tcp_rmem's maximum is 32 MiB on the machines here, and each side's receive buffer may grow to it.
    /// </summary>
    private static async Task FloodUntilStalledThenReadAllAsync(Socket client, ChildProcess server)
    {
        const int ChunkSize = 1 << 20;
        const int Chunks = 160;
        var pattern = RandomBytes(ChunkSize);
        long pushed = 0;
        var pushing = Task.Run(async () =>
        {
            for (int i = 0; i < Chunks; i++)
            {
                var chunk = (byte[])pattern.Clone();
                BitConverter.TryWriteBytes(chunk, i); // each chunk numbered: a lost or repeated one shows
                await client.SendAsync(chunk);
                Interlocked.Add(ref pushed, chunk.Length);
            }
        });

        // Stalled: no progress for a second while the peer does not read (the condition under test).
        long last = -1;
        var unchangedSince = System.Diagnostics.Stopwatch.StartNew();
        var deadline = System.Diagnostics.Stopwatch.StartNew();
        while (unchangedSince.Elapsed < TimeSpan.FromSeconds(1) && !pushing.IsCompleted && deadline.Elapsed < Deadline)
        {
            long now = Interlocked.Read(ref pushed);
            if (now != last)
            {
                last = now;
                unchangedSince.Restart();
            }

            await Task.Delay(50);
        }

        Assert.False(pushing.IsFaulted, $"the flood failed: {pushing.Exception?.InnerException?.Message}\n{server.StandardErrorText}");
        Assert.False(pushing.IsCompleted, $"all {Chunks} MiB went through a peer that was not reading");

        var buffer = new byte[ChunkSize];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        for (int i = 0; i < Chunks; i++)
        {
            await EchoKit.Client.SocketTransfer.ReceiveExactlyAsync(client, buffer, cts.Token);
            Assert.Equal(i, BitConverter.ToInt32(buffer));
            Assert.True(buffer.AsSpan(sizeof(int)).SequenceEqual(pattern.AsSpan(sizeof(int))), $"chunk {i} came back altered");
        }

        await pushing;
    }

    private static async Task PingPongAsync(Socket client, int count)
    {
        var message = RandomBytes(64);
        for (int i = 0; i < count; i++)
        {
            await client.SendAsync(message);
            Assert.Equal(message, await ReceiveExactlyAsync(client, message.Length));
        }
    }

    private static async Task<long> PingPongUntilAsync(Socket client, CancellationToken stop)
    {
        long rounds = 0;
        var message = RandomBytes(64);
        while (!stop.IsCancellationRequested)
        {
            await client.SendAsync(message);
            Assert.Equal(message, await ReceiveExactlyAsync(client, message.Length));
            rounds++;
        }

        return rounds;
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

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task SIGTERM_mid_stream_echoes_what_was_in_flight_closes_with_FIN_and_exits_0(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--no-greeting", "--shutdown-timeout", "10s");
        await using (server)
        {
            var clients = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => ConnectAsync(port)));
            var idle = await ConnectAsync(port);
            try
            {
                var payloads = clients.Select(_ => RandomBytes(4 << 20)).ToArray();
                var echoes = clients.Select(c => ReceiveToEndAsync(c, TimeSpan.FromSeconds(30))).ToArray();
                // Each client sends 4 MiB at once, so the signal lands while echoes are still in flight.
                var sends = clients.Select((c, i) => c.SendAsync(payloads[i])).ToArray();
                await Task.WhenAll(sends).WaitAsync(Deadline);

                server.Signal(ChildProcess.SIGTERM);

                for (int i = 0; i < clients.Length; i++)
                {
                    var echoed = await echoes[i];
                    Assert.Equal(payloads[i].Length, echoed.Length);
                    Assert.Equal(payloads[i], echoed);
                }

                Assert.Empty(await ReceiveToEndAsync(idle)); // FIN, not RST: a reset would throw here
                foreach (var client in clients.Append(idle))
                {
                    client.Dispose(); // the server waits for our close after its FIN
                }

                Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
                Assert.Contains("stopped", server.StandardErrorText, StringComparison.Ordinal);
                Assert.Contains("closed: server shutdown", server.StandardErrorText, StringComparison.Ordinal);
            }
            finally
            {
                foreach (var client in clients.Append(idle))
                {
                    client.Dispose();
                }
            }
        }
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task A_client_that_never_finishes_is_aborted_at_the_shutdown_timeout_and_the_exit_code_is_still_0(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--no-greeting", "--shutdown-timeout", "1s");
        await using (server)
        {
            using var stubborn = await ConnectAsync(port);
            // Fill both directions and never read: the server cannot finish echoing.
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            try
            {
                var chunk = new byte[1 << 20];
                for (int i = 0; i < 64; i++)
                {
                    await stubborn.SendAsync(chunk, cts.Token);
                }
            }
            catch (OperationCanceledException)
            {
                // TCP pushed back: both buffers are full.
            }

            var started = DateTime.UtcNow;
            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(15));
            Assert.True(server.StandardErrorText.Contains("aborted at shutdown timeout", StringComparison.Ordinal), server.StandardErrorText);
        }
    }

    [Fact]
    public async Task A_restart_binds_the_same_port_at_once_although_the_last_connection_is_in_TIME_WAIT()
    {
        var (first, port) = await ChildProcess.StartServerAsync("--quiet");
        await using (first)
        {
            using var client = await ConnectAsync(port);
            await ReceiveExactlyAsync(client, GreetingBytes.Length);
            first.Signal(ChildProcess.SIGTERM);
            Assert.Empty(await ReceiveToEndAsync(client)); // the server closed first: its side goes to TIME_WAIT
            client.Dispose();
            Assert.Equal(0, await first.WaitForExitAsync(ExitDeadline));
        }

        await using var second = ChildProcess.Start("serve", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--quiet");
        await second.WaitForStderrAsync($"listening on [::]:{port}", Deadline);
        using var again = await ConnectAsync(port);
        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(again, GreetingBytes.Length));
    }

    [Fact]
    public async Task Port_in_use_is_one_line_with_EADDRINUSE_a_hint_and_exit_3()
    {
        using var holder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        holder.Bind(new IPEndPoint(IPAddress.Any, 0));
        holder.Listen();
        int port = ((IPEndPoint)holder.LocalEndPoint!).Port;

        var result = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture));

        Assert.Equal(3, result.ExitCode);
        string line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"echokit: bind failed: Address already in use (EADDRINUSE) on [::]:{port}", line, StringComparison.Ordinal);
        Assert.Contains($"ss -ltnp 'sport = :{port}'", line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_address_this_machine_does_not_have_is_EADDRNOTAVAIL_and_exit_3()
    {
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--port", "0", "--bind", "192.0.2.1");
        Assert.Equal(3, result.ExitCode);
        Assert.Contains("bind failed: Cannot assign requested address (EADDRNOTAVAIL) on 192.0.2.1:0", result.Stderr, StringComparison.Ordinal);
        NoStackTrace(result.Stderr);
    }

    [Fact]
    public async Task A_privileged_port_without_privilege_is_EACCES_and_exit_3()
    {
        // Tests run as root here: take away CAP_NET_BIND_SERVICE for this one process (setpriv is in util-linux).
        Assert.SkipUnless(File.Exists("/usr/bin/setpriv"), "setpriv (util-linux) is not installed");
        Assert.SkipWhen(int.Parse(File.ReadAllText("/proc/sys/net/ipv4/ip_unprivileged_port_start").Trim(), System.Globalization.CultureInfo.InvariantCulture) <= 80,
            "this kernel lets anyone bind port 80 (net.ipv4.ip_unprivileged_port_start)");
        var info = new System.Diagnostics.ProcessStartInfo("/usr/bin/setpriv")
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        foreach (var arg in (string[])["--bounding-set=-net_bind_service", .. ChildProcess.Echokit("serve", "--port", "80")])
        {
            info.ArgumentList.Add(arg);
        }

        using var process = System.Diagnostics.Process.Start(info)!;
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(ExitDeadline);
        Assert.Equal(3, process.ExitCode);
        Assert.Contains("bind failed: Permission denied (EACCES) on [::]:80", await stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_bind_host_name_is_resolved_and_IPv6_literals_work()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--bind", "[::1]", "--quiet");
        await using (server)
        {
            using var client = await ConnectAsync(IPAddress.IPv6Loopback, port);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            await Assert.ThrowsAsync<SocketException>(() => ConnectAsync(IPAddress.Loopback, port));
        }

        var (named, namedPort) = await ChildProcess.StartServerAsync("--bind", "localhost", "--quiet");
        await using (named)
        {
            using var client = await ConnectAsync(IPAddress.Loopback, namedPort);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
        }
    }

    [Fact]
    public async Task Minus_6_listens_on_IPv6_only_and_minus_4_on_IPv4_only()
    {
        var (six, sixPort) = await ChildProcess.StartServerAsync("-6", "--quiet");
        await using (six)
        {
            Assert.DoesNotContain("dual-stack", await six.WaitForStderrAsync("listening on [::]:", Deadline), StringComparison.Ordinal);
            using var client = await ConnectAsync(IPAddress.IPv6Loopback, sixPort);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            var refused = await Assert.ThrowsAsync<SocketException>(() => ConnectAsync(IPAddress.Loopback, sixPort));
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        }

        var (four, fourPort) = await ChildProcess.StartServerAsync("-4", "--quiet");
        await using (four)
        {
            await four.WaitForStderrAsync("listening on 0.0.0.0:", Deadline);
            using var client = await ConnectAsync(IPAddress.Loopback, fourPort);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            var refused = await Assert.ThrowsAsync<SocketException>(() => ConnectAsync(IPAddress.IPv6Loopback, fourPort));
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);

            var wrongFamily = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "-6", "127.0.0.1", fourPort.ToString(System.Globalization.CultureInfo.InvariantCulture), "--send", "x");
            Assert.Equal(4, wrongFamily.ExitCode);
            Assert.Contains("127.0.0.1 has no IPv6 address", wrongFamily.Stderr, StringComparison.Ordinal);
            var rightFamily = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "-4", "127.0.0.1", fourPort.ToString(System.Globalization.CultureInfo.InvariantCulture), "--send", "x", "--expect", "182");
            Assert.Equal(0, rightFamily.ExitCode);
        }
    }

    [Theory]
    [InlineData("-4 and -6 cannot be combined", "serve", "-4", "-6")]
    [InlineData("-4 and -6 cannot be combined", "connect", "::1", "-4", "-6")]
    [InlineData("invalid --port value '-1'", "serve", "--port", "-1")]
    [InlineData("invalid --port value '65536'", "serve", "--port", "65536")]
    [InlineData("invalid --port value 'http'", "serve", "--port", "http")]
    [InlineData("invalid --shutdown-timeout value: '-1s' is negative", "serve", "--shutdown-timeout", "-1s")]
    [InlineData("invalid --shutdown-timeout value: 'soon' is not a duration", "serve", "--shutdown-timeout", "soon")]
    [InlineData("invalid --bind value 'not an address'", "serve", "--bind", "not an address")]
    [InlineData("'--frobnicate'", "serve", "--frobnicate")]
    [InlineData("'nope' for option '--engine'", "serve", "--engine", "nope")]
    [InlineData("Did you mean one of the following? Auto, Epoll, Socket", "bench", "127.0.0.1:9", "--engine", "banana")]
    [InlineData("'loud' for option '--log-level'", "serve", "--log-level", "loud")]
    [InlineData("invalid --busy-poll value: '20ms' is too long (at most 10ms", "serve", "--busy-poll", "20ms")]
    [InlineData("invalid --busy-poll value: 'fast' is not a duration", "serve", "--busy-poll", "fast")]
    [InlineData("missing HOST (or --unix PATH)", "connect")]
    [InlineData("invalid port '0'", "connect", "127.0.0.1", "0")]
    [InlineData("invalid port 'x'", "connect", "127.0.0.1:x")]
    [InlineData("port given twice", "connect", "127.0.0.1:80", "81")]
    [InlineData("invalid --send value: unknown escape \\q", "connect", "127.0.0.1", "--send", "a\\qb")]
    [InlineData("invalid --send value: \\x must be followed by two hex digits", "connect", "127.0.0.1", "--send", "\\xZZ")]
    [InlineData("invalid --expect value '0'", "connect", "127.0.0.1", "--send", "a", "--expect", "0")]
    [InlineData("invalid --wait value: '0' must be greater than zero", "connect", "127.0.0.1", "--send", "a", "--wait", "0")]
    [InlineData("invalid --connect-timeout value: '1 minute' is not a duration", "connect", "127.0.0.1", "--connect-timeout", "1 minute")]
    [InlineData("Required command was not provided", new string[0])]
    public Task Each_bad_argument_is_one_line_on_stderr_and_exit_2(string expected, params string[] args) =>
        AssertUsageErrorAsync(expected, args);

    /// <summary>A bad command line: exit 2, nothing on stdout, one line on stderr that names the problem and --help.</summary>
    internal static async Task AssertUsageErrorAsync(string expected, params string[] args)
    {
        var result = await ChildProcess.RunAsync(ExitDeadline, null, args);
        Assert.Equal(2, result.ExitCode);
        string line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("echokit: ", line, StringComparison.Ordinal);
        Assert.Contains(expected, line, StringComparison.Ordinal);
        Assert.Contains("--help", line, StringComparison.Ordinal);
        Assert.Empty(result.Stdout);
    }

    [Fact]
    public async Task Help_lists_every_flag_with_its_default()
    {
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--help");
        Assert.Equal(0, result.ExitCode);
        foreach (var text in new[] { "--port", "[default: 8888]", "--bind", "--no-greeting", "--quiet", "--shutdown-timeout", "[default: 5s]" })
        {
            Assert.Contains(text, result.StdoutText, StringComparison.Ordinal);
        }

        var connect = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "--help");
        foreach (var text in new[] { "--send", "--expect", "--wait", "[default: 2s]", "--connect-timeout", "[default: 10s]", "--recv-timeout", "--send-timeout" })
        {
            Assert.Contains(text, connect.StdoutText, StringComparison.Ordinal);
        }
    }

    internal static void NoStackTrace(string stderr)
    {
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", stderr, StringComparison.Ordinal);
    }

    internal static byte[] RandomBytes(int length)
    {
        var bytes = new byte[length];
        Random.Shared.NextBytes(bytes);
        return bytes;
    }
}

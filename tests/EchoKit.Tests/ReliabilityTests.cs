using System.Net;
using System.Net.Sockets;
using System.Text;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>Limits, timeouts, backpressure and exhaustion, each against the real <c>echokit serve</c> process.</summary>
[Collection(nameof(ReliabilityTests))]
public sealed class ReliabilityTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);

    private static async Task AssertEchoesAsync(Socket client, int size = 16)
    {
        var message = new byte[size];
        Random.Shared.NextBytes(message);
        await client.SendAsync(message);
        Assert.Equal(message, await ReceiveExactlyAsync(client, size));
    }

    /// <summary>Over two seconds the server uses under a fifth of a core, and is still alive.</summary>
    private static async Task AssertIdlesAsync(ChildProcess server)
    {
        var cpuBefore = ProcStats.CpuTime(server.Pid);
        var wall = System.Diagnostics.Stopwatch.StartNew();
        await Task.Delay(TimeSpan.FromSeconds(2));
        double cpuShare = (ProcStats.CpuTime(server.Pid) - cpuBefore) / wall.Elapsed;
        Assert.True(cpuShare < 0.2, $"the server used {cpuShare:P0} of a core while out of descriptors");
        Assert.False(server.HasExited, server.StandardErrorText);
    }

    /// <summary>
    /// After a storm of clients has gone, a new client is echoed. The server may still be working through
    /// the storm's dead connections in its accept queue and answer "server busy" for a moment (it counts a
    /// connection until it has seen its close); the client then tries again, for up to 30 s.
    /// </summary>
    private static async Task AssertServesFreshClientAsync(ChildProcess server, int port)
    {
        var message = "after the storm"u8.ToArray();
        var busy = "server busy"u8.ToArray();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        int refusals = 0;
        while (true)
        {
            // From another source address: the closed connections may still sit in the server's backlog,
            // and a reused ephemeral port would collide with one of them (the kernel answers with a reset).
            using var fresh = await ConnectFromAsync(IPAddress.Parse("127.0.0.2"), port);
            byte[] echoed;
            try
            {
                await fresh.SendAsync(message);
                echoed = await ReceiveExactlyAsync(fresh, message.Length, TimeSpan.FromSeconds(30));
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException)
            {
                Assert.Fail($"no echo after the descriptors freed up ({refusals} 'server busy' before): {e.Message}\n{server.StandardErrorText}");
                return;
            }

            if (echoed.AsSpan().SequenceEqual(message))
            {
                return;
            }

            Assert.True(echoed.AsSpan().StartsWith(busy) && DateTime.UtcNow < deadline,
                $"got '{System.Text.Encoding.ASCII.GetString(echoed)}' instead of the echo ({refusals} 'server busy' before)\n{server.StandardErrorText}");
            refusals++;
            await Task.Delay(100); // give the server a moment to close what it has accepted
        }
    }

    private static async Task<Socket> ConnectFromAsync(IPAddress source, int port)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        socket.Bind(new IPEndPoint(source, 0));
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).WaitAsync(Deadline);
        return socket;
    }

    private static async Task StopAsync(ChildProcess server)
    {
        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task A_stderr_nobody_reads_never_stalls_the_server_and_dropped_log_lines_are_counted(string engine)
    {
        int port = FreePort();
        string[] command = ChildProcess.Echokit("serve", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--quiet", "--no-greeting", "--engine", engine);
        await using var server = ChildProcess.StartProgram(command[0], stdoutPaused: false, stderrPaused: true, command[1..]);
        await WaitUntilListeningAsync(port, Deadline);

        // 3,000 connections log 6,000 lines (about 600 KB): far more than a pipe holds (64 KiB) and
        // more than the logger queues; every log write after that would block if the server waited.
        for (int i = 0; i < 3000; i++)
        {
            using var brief = await ConnectAsync(port);
        }

        using (var client = await ConnectAsync(port))
        {
            await AssertEchoesAsync(client);
        }

        server.ResumeStderr();
        await server.WaitForStderrAsync("log lines dropped: stderr was not being read", Deadline);
        await StopAsync(server);
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Max_connections_refuses_one_more_with_a_line_keeps_the_others_and_recovers(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--no-greeting", "--max-connections", "3");
        await using (server)
        {
            var clients = new List<Socket>();
            for (int i = 0; i < 3; i++)
            {
                clients.Add(await ConnectAsync(port));
                await AssertEchoesAsync(clients[^1]); // accepted and served before the next one comes
            }

            using (var refused = await ConnectAsync(port))
            {
                Assert.Equal("server busy: 3 connections\n", Encoding.ASCII.GetString(await ReceiveToEndAsync(refused)));
            }

            await server.WaitForStderrAsync("refused: server busy (3 connections)", Deadline);
            foreach (var client in clients)
            {
                await AssertEchoesAsync(client);
            }

            clients[0].Dispose();
            await server.WaitForStderrAsync("connection 1 from", Deadline); // its close is logged
            using (var later = await ConnectAsync(port))
            {
                await AssertEchoesAsync(later);
            }

            clients.ForEach(c => c.Dispose());
            await StopAsync(server);
        }
    }

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

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task A_client_that_sends_without_reading_is_throttled_by_TCP_memory_stays_flat_and_others_are_served_at_once(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--no-greeting", "--send-timeout", "0");
        await using (server)
        {
            using var probe = await ConnectAsync(port);
            await AssertEchoesAsync(probe);
            long rssBefore = ProcStats.ResidentBytes(server.Pid);

            // Offer 256 MiB without ever reading the echo.
            using var pusher = await ConnectAsync(port);
            long pushed = 0;
            using var stopPushing = new CancellationTokenSource(TimeSpan.FromSeconds(6));
            var push = Task.Run(async () =>
            {
                var chunk = new byte[1 << 20];
                try
                {
                    while (pushed < 256L << 20)
                    {
                        pushed += await pusher.SendAsync(chunk, SocketFlags.None, stopPushing.Token);
                    }
                }
                catch (OperationCanceledException)
                {
                    // Time is up: TCP has been holding us back.
                }
            });

            long worstMs = 0;
            long maxRss = rssBefore;
            while (!push.IsCompleted)
            {
                var sw = System.Diagnostics.Stopwatch.StartNew();
                await AssertEchoesAsync(probe, 64);
                worstMs = Math.Max(worstMs, sw.ElapsedMilliseconds);
                maxRss = Math.Max(maxRss, ProcStats.ResidentBytes(server.Pid));
                await Task.Delay(100);
            }

            await push;
            Assert.True(pushed < 256L << 20, $"the server took all {pushed} bytes without the client reading: no backpressure");
            Assert.True(worstMs < 1000, $"another client waited {worstMs} ms for its echo");
            Assert.True(maxRss - rssBefore < 64L << 20, $"server RSS grew by {(maxRss - rssBefore) >> 20} MiB");
            pusher.Dispose();
            probe.Dispose();
            await StopAsync(server);
        }
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task A_stdout_nobody_reads_slows_the_echo_instead_of_growing_memory_and_loses_no_byte(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync(stdoutPaused: true, "--engine", engine, "--no-greeting", "--send-timeout", "0");
        await using (server)
        {
            long rssBefore = ProcStats.ResidentBytes(server.Pid);
            using var client = await ConnectAsync(port);
            var payload = ServeProcessTests.RandomBytes(64 << 20);
            long sent = 0;
            var echoed = new MemoryStream();
            var reader = Task.Run(async () =>
            {
                var buffer = new byte[1 << 16];
                int n;
                while (echoed.Length < payload.Length && (n = await client.ReceiveAsync(buffer)) > 0)
                {
                    echoed.Write(buffer, 0, n);
                }
            });
            var writer = Task.Run(async () =>
            {
                for (int offset = 0; offset < payload.Length; offset += 1 << 16)
                {
                    sent += await client.SendAsync(payload.AsMemory(offset, 1 << 16));
                }
            });

            // stdout is a full pipe: printing waits, so echoing waits, so TCP holds the client back.
            await Task.WhenAny(writer, Task.Delay(TimeSpan.FromSeconds(3)));
            Assert.False(writer.IsCompleted, "64 MiB went through although nobody read the server's stdout");
            Assert.True(sent < 48 << 20, $"{sent >> 20} MiB were taken in while stdout was blocked");
            long rssBlocked = ProcStats.ResidentBytes(server.Pid);
            Assert.True(rssBlocked - rssBefore < 64L << 20, $"server RSS grew by {(rssBlocked - rssBefore) >> 20} MiB");

            server.ResumeStdout(); // the terminal catches up: everything flows, nothing was dropped
            await writer.WaitAsync(TimeSpan.FromSeconds(60));
            await reader.WaitAsync(TimeSpan.FromSeconds(60));
            Assert.Equal(payload, echoed.ToArray());
            await server.WaitForStdoutAsync(payload.Length, TimeSpan.FromSeconds(60));
            Assert.Equal(payload, server.StandardOutputBytes);
            client.Dispose();
            await StopAsync(server);
        }
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task When_the_descriptor_limit_drops_under_a_running_server_it_answers_busy_before_running_out_idles_and_recovers(string engine)
    {
        // The limit is lowered after start (prlimit --pid), so the budget taken at start no longer protects
        // the server. It must notice before the descriptors run out: a .NET process that meets EMFILE while
        // the runtime starts a thread (a pipe, /proc/self/task/N/comm) dies ("Out of memory."), which a
        // storm of connections on a loaded machine made happen.
        Assert.SkipUnless(File.Exists("/usr/bin/prlimit"), "prlimit (util-linux) is not installed");
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--no-greeting");
        await using (server)
        {
            long startLimit = ProcStats.SoftDescriptorLimit(server.Pid);
            await SetSoftDescriptorLimitAsync(server, 256);
            var clients = new List<Socket>();
            try
            {
                await ConnectManyAsync(server, port, 600, clients);
                await server.WaitForStderrAsync("capped at the connections open: the descriptor limit in force is 256", Deadline);
                await server.WaitForStderrAsync("refused: server busy", Deadline);
                await AssertIdlesAsync(server);
                Assert.False(server.HasExited, server.StandardErrorText);
            }
            finally
            {
                clients.ForEach(c => c.Dispose());
            }

            await AssertServesFreshClientAsync(server, port);

            // The limit back where it was: more clients than the cap are served again, none told busy.
            await SetSoftDescriptorLimitAsync(server, startLimit);
            clients.Clear();
            try
            {
                await ConnectManyAsync(server, port, 400, clients);
                foreach (var client in clients)
                {
                    await AssertEchoesAsync(client);
                }

                Assert.Contains("restored: the descriptor limit is back to", server.StandardErrorText, StringComparison.Ordinal);
            }
            finally
            {
                clients.ForEach(c => c.Dispose());
            }

            Assert.False(server.HasExited);
        }
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task When_accept_meets_EMFILE_it_backs_off_without_spinning_hands_back_its_spare_descriptors_and_recovers(string engine)
    {
        // A limit below what is already open: the next accept has no descriptor number left and fails.
        Assert.SkipUnless(File.Exists("/usr/bin/prlimit"), "prlimit (util-linux) is not installed");
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--no-greeting");
        await using (server)
        {
            var clients = new List<Socket>();
            try
            {
                await ConnectManyAsync(server, port, 150, clients);
                await AssertEchoesAsync(clients[^1]); // all 150 are in
                await SetSoftDescriptorLimitAsync(server, 100);
                await ConnectManyAsync(server, port, 50, clients);

                Assert.Contains("retrying in", await server.WaitForStderrAsync("accept failed: Too many open files (EMFILE)", Deadline), StringComparison.Ordinal);
                await server.WaitForStderrAsync("lowered after EMFILE", Deadline);
                await AssertIdlesAsync(server);
                await AssertEchoesAsync(clients[0]); // those already in are served throughout
            }
            finally
            {
                clients.ForEach(c => c.Dispose());
            }

            await AssertServesFreshClientAsync(server, port);
            Assert.False(server.HasExited);
        }
    }

    /// <summary>Sets the running server's soft RLIMIT_NOFILE (prlimit --pid; the hard limit stays, so it can be raised again).</summary>
    private static async Task SetSoftDescriptorLimitAsync(ChildProcess server, long limit)
    {
        var set = await ChildProcess.RunProgramAsync("/usr/bin/prlimit", ExitDeadline, null,
            "--pid", server.Pid.ToString(System.Globalization.CultureInfo.InvariantCulture), $"--nofile={limit}:");
        Assert.True(set.ExitCode == 0, set.ToString());
        Assert.Equal(limit, ProcStats.SoftDescriptorLimit(server.Pid));
    }

    /// <summary>Connects <paramref name="count"/> clients (the kernel completes them whether or not the server accepts).</summary>
    private static async Task ConnectManyAsync(ChildProcess server, int port, int count, List<Socket> clients)
    {
        for (int i = 0; i < count; i++)
        {
            try
            {
                clients.Add(await ConnectAsync(port));
            }
            catch (SocketException e)
            {
                Assert.Fail($"connect {i} failed ({e.SocketErrorCode}); server exited: {server.HasExited}; its stderr:\n{server.StandardErrorText}");
            }
        }
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task With_only_256_descriptors_600_clients_are_served_or_told_busy_the_server_idles_and_recovers(string engine)
    {
        Assert.SkipUnless(File.Exists("/usr/bin/prlimit"), "prlimit (util-linux) is not installed");
        await using var server = ChildProcess.StartProgram("/usr/bin/prlimit",
            ["--nofile=256:256", "--", .. ChildProcess.Echokit("serve", "--port", "0", "--quiet", "--no-greeting", "--engine", engine)]);
        string line = await server.WaitForStderrAsync("listening on", Deadline);
        int port = int.Parse(line[(line.LastIndexOf("]:", StringComparison.Ordinal) + 2)..].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);

        var clients = new List<Socket>();
        try
        {
            await ConnectManyAsync(server, port, 600, clients); // more than the server can accept

            // It keeps a reserve of descriptors: past its budget it answers "server busy" instead of hitting EMFILE.
            await server.WaitForStderrAsync("the descriptor limit allows", Deadline);
            await server.WaitForStderrAsync("refused: server busy", Deadline);

            await AssertIdlesAsync(server); // saturated: it must wait, not spin
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }

        // Descriptors free up as those connections close; a new client is served without a restart.
        await AssertServesFreshClientAsync(server, port);

        Assert.False(server.HasExited);
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Connect_close_churn_and_an_RST_storm_leak_no_descriptors_or_memory(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet");
        await using (server)
        {
            // Warm up every path once (the runtime opens some assemblies lazily, which costs
            // descriptors the first time), then take the baseline.
            await ChurnAsync(port, workers: 2, cycles: 100);
            await ResetStormAsync(port, batches: 1, size: 50);
            await ProcStats.WaitUntilAsync(() => server.StandardErrorText.Split('\n').Count(l => l.Contains(" closed: ", StringComparison.Ordinal)) >= 250,
                Deadline, () => "the warm-up connections to close");
            int fdsBefore = ProcStats.OpenDescriptors(server.Pid);
            long rssBefore = ProcStats.ResidentBytes(server.Pid);

            await ChurnAsync(port, workers: 8, cycles: 2500);      // 20,000 connect / send / close cycles
            await ResetStormAsync(port, batches: 10, size: 100);    // 1,000 connections reset mid-transfer

            // +32: the runtime opens about 11 files once, lazily, the first time it formats a stack trace
            // (System.Diagnostics.StackTrace, System.Reflection.Metadata, ..., our .pdb), which the warm-up
            // does not always reach. A leak of even 0.2 % of these 21,000 connections would exceed it.
            await ProcStats.WaitUntilAsync(() => ProcStats.OpenDescriptors(server.Pid) <= fdsBefore + 32, TimeSpan.FromSeconds(30),
                () => $"descriptors {ProcStats.OpenDescriptors(server.Pid)}, started at {fdsBefore}");
            long rssAfter = ProcStats.ResidentBytes(server.Pid);
            Assert.True(rssAfter - rssBefore < 48L << 20, $"RSS grew from {rssBefore >> 20} MiB to {rssAfter >> 20} MiB");

            using (var still = await ConnectAsync(port))
            {
                await ReceiveExactlyAsync(still, GreetingBytes.Length);
                await AssertEchoesAsync(still);
            }

            await StopAsync(server);
        }
    }

    private static Task ChurnAsync(int port, int workers, int cycles) =>
        Task.WhenAll(Enumerable.Range(0, workers).Select(_ => Task.Run(async () =>
        {
            for (int i = 0; i < cycles; i++)
            {
                using var client = await ConnectAsync(port);
                await ReceiveExactlyAsync(client, GreetingBytes.Length);
                await AssertEchoesAsync(client, 8);
            }
        })));

    private static async Task ResetStormAsync(int port, int batches, int size)
    {
        var junk = new byte[256 * 1024];
        for (int batch = 0; batch < batches; batch++)
        {
            var victims = await Task.WhenAll(Enumerable.Range(0, size).Select(_ => ConnectAsync(port)));
            foreach (var victim in victims)
            {
                _ = victim.SendAsync(junk); // in flight when the RST goes out
                victim.LingerState = new LingerOption(true, 0);
                victim.Dispose();
            }
        }
    }

    [Theory]
    [InlineData("invalid --max-connections value '-1'", "--max-connections", "-1")]
    [InlineData("invalid --max-connections value 'many'", "--max-connections", "many")]
    [InlineData("invalid --idle-timeout value: '-5s' is negative", "--idle-timeout", "-5s")]
    [InlineData("invalid --idle-timeout value: 'forever' is not a duration", "--idle-timeout", "forever")]
    [InlineData("invalid --send-timeout value: '10 s' is not a duration", "--send-timeout", "10 s")]
    [InlineData("invalid --send-timeout value: '1e9h' is too long", "--send-timeout", "1e9h")]
    public Task Limit_flags_are_validated(string expected, params string[] args) =>
        ServeProcessTests.AssertUsageErrorAsync(expected, ["serve", "--port", "0", .. args]);
}

/// <summary>Timeouts, CPU and memory figures are measured here: these tests run alone, after the parallel ones.</summary>
[CollectionDefinition(nameof(ReliabilityTests), DisableParallelization = true)]
public sealed class ReliabilityTestsCollection;

using System.Net;
using System.Net.Sockets;
using System.Text;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

// --max-connections and the descriptor limit: clients past them are told "server busy", the server idles and recovers.
public sealed partial class ReliabilityTests
{
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
    [InlineData(30, "epoll")]
    [InlineData(48, "epoll")]
    [InlineData(100, "epoll")]
    [InlineData(100, "socket")]
    public async Task A_descriptor_limit_too_low_to_serve_anyone_is_one_line_and_exit_3_before_listening(int limit, string engine)
    {
        Assert.SkipUnless(File.Exists("/usr/bin/prlimit"), "prlimit (util-linux) is not installed");
        string limitArg = "--nofile=" + limit.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var result = await ChildProcess.RunProgramAsync("/usr/bin/prlimit", ExitDeadline, null,
            [limitArg, .. ChildProcess.Echokit("serve", "--port", "0", "--engine", engine, "--loops", "2")]);
        Assert.Equal(3, result.ExitCode);
        string line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"echokit: the descriptor limit (ulimit -n) is {limit}", line, StringComparison.Ordinal);
        Assert.Contains("raise", line, StringComparison.Ordinal);
        ServeProcessTests.NoStackTrace(result.Stderr);
    }
}

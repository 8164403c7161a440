using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

// Busy polling and connections read directly under dense traffic keep every guarantee and stop with the traffic.
public sealed partial class ServeProcessTests
{
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

    /// <summary>
    /// The kernel wakes the loop that registered first for every new connection while it keeps up, so a burst
    /// used to land on one loop (40 of 40 here); the accepting loop now hands connections to a loop with fewer.
    /// </summary>
    [Fact]
    public async Task A_burst_of_connections_is_spread_over_the_event_loops()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--no-greeting", "--engine", "epoll", "--loops", "2", "--log-level", "Debug");
        await using (server)
        {
            const int Count = 40;
            var clients = await Task.WhenAll(Enumerable.Range(0, Count).Select(_ => ConnectAsync(port)));
            try
            {
                foreach (var client in clients)
                {
                    await client.SendAsync("x"u8.ToArray());
                    Assert.Equal("x"u8.ToArray(), await ReceiveExactlyAsync(client, 1));
                }

                server.Signal(ChildProcess.SIGTERM);
                foreach (var client in clients)
                {
                    Assert.Empty(await ReceiveToEndAsync(client));
                    client.Dispose();
                }

                Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
                var served = System.Text.RegularExpressions.Regex.Matches(server.StandardErrorText, @"event loop (\d): served (\d+) connections")
                    .ToDictionary(m => m.Groups[1].Value, m => int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
                Assert.True(served.Count == 2 && served.Values.Sum() == Count && served.Values.All(n => n >= Count / 4),
                    $"connections per loop: {string.Join(", ", served.Select(p => $"loop {p.Key}: {p.Value}"))}");
            }
            finally
            {
                foreach (var client in clients)
                {
                    client.Dispose();
                }
            }
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
            var loop = System.Text.RegularExpressions.Regex.Match(server.StandardErrorText, @"event loop 0: served \d+ connections; (\d+) of (\d+) reads found their bytes by polling");
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
}

using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

// Peers and outputs that do not keep up: TCP throttles them, memory stays flat, nothing is lost.
public sealed partial class ReliabilityTests
{
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
}

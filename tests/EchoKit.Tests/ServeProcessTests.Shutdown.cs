using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

// SIGTERM: in-flight bytes echoed, FIN, exit 0; what never finishes is reset at the shutdown timeout.
public sealed partial class ServeProcessTests
{
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

    /// <summary>
    /// Connections the kernel completed that are still in the listen backlog when the stop begins are served,
    /// not reset by the close (a load balancer in TCP mode cannot retry those). The server is stopped (SIGSTOP)
    /// while the clients connect and send, then gets SIGTERM and SIGCONT together.
    /// </summary>
    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Connections_waiting_in_the_backlog_when_SIGTERM_arrives_are_greeted_echoed_and_closed_with_FIN(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet", "--shutdown-timeout", "10s");
        await using (server)
        {
            server.Signal(19); // SIGSTOP
            await ProcStats.WaitUntilAsync(() => ProcStats.IsStopped(server.Pid), Deadline, () => "the server never stopped");
            const int Count = 100;
            var clients = await Task.WhenAll(Enumerable.Range(0, Count).Select(_ => ConnectAsync(port)));
            try
            {
                foreach (var client in clients)
                {
                    await client.SendAsync("queued\n"u8.ToArray());
                }

                server.Signal(ChildProcess.SIGTERM);
                server.Signal(18); // SIGCONT: the stop and the backlog's connections meet
                int served = 0;
                var failures = new List<string>();
                foreach (var client in clients)
                {
                    try
                    {
                        byte[] all = await ReceiveToEndAsync(client);
                        if (all.AsSpan().SequenceEqual([.. GreetingBytes, .. "queued\n"u8]))
                        {
                            served++;
                        }
                        else
                        {
                            failures.Add($"{all.Length} bytes");
                        }
                    }
                    catch (System.Net.Sockets.SocketException e)
                    {
                        failures.Add(e.SocketErrorCode.ToString());
                    }
                }

                Assert.True(served == Count, $"{served} of {Count} served; the others: {string.Join(", ", failures.CountBy(f => f).Select(f => $"{f.Value}x {f.Key}"))}\n{server.StandardErrorText}");
                foreach (var client in clients)
                {
                    client.Dispose();
                }

                Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
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
}

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

using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using EchoKit.Tests.Infrastructure;

namespace EchoKit.Tests;

/// <summary>
/// <c>echokit bench</c> must not pass a server that does not echo: one that accepts and never answers, one
/// that stalls mid-run, one whose greeting was not skipped; and its counts never go negative.
/// </summary>
public sealed class BenchVerdictTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(60);

    /// <summary>A TCP server on loopback that echoes the first <paramref name="echoBytes"/> bytes of each connection, then only reads.</summary>
    private static (Socket Listener, Task Loop, int Port) StalledServer(long echoBytes, CancellationToken stop)
    {
        var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var loop = Task.Run(async () =>
        {
            try
            {
                while (!stop.IsCancellationRequested)
                {
                    var client = await listener.AcceptAsync(stop);
                    _ = Task.Run(async () =>
                    {
                        using var c = client;
                        var buffer = new byte[64 * 1024];
                        long echoed = 0;
                        try
                        {
                            int n;
                            while ((n = await c.ReceiveAsync(buffer, stop)) > 0)
                            {
                                int echo = (int)Math.Clamp(echoBytes - echoed, 0, n);
                                if (echo > 0)
                                {
                                    await c.SendAsync(buffer.AsMemory(0, echo), stop);
                                    echoed += echo;
                                }
                            }
                        }
                        catch (Exception e) when (e is OperationCanceledException or SocketException)
                        {
                        }
                    });
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
            }
        });
        return (listener, loop, ((IPEndPoint)listener.LocalEndPoint!).Port);
    }

    [Theory]
    [InlineData(0L, "epoll", "no message came back at all")]
    [InlineData(0L, "socket", "no message came back at all")]
    [InlineData(256L << 10, "epoll", "no byte came back for 1s with messages in flight")]
    [InlineData(256L << 10, "socket", "no byte came back for 1s with messages in flight")]
    public async Task A_server_that_does_not_echo_or_stalls_fails_the_run_with_exit_11(long echoBytes, string engine, string expected)
    {
        using var stop = new CancellationTokenSource();
        var (listener, loop, port) = StalledServer(echoBytes, stop.Token);
        using (listener)
        {
            var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", $"127.0.0.1:{port}", "-c", "2", "-t", echoBytes == 0 ? "500ms" : "3s",
                "--warmup", "0", "--skip-greeting", "0", "--echo-timeout", "1s", "--engine", engine, "--json");
            stop.Cancel();
            Assert.True(result.ExitCode == 11, result.ToString());
            Assert.Contains($"2 of 2 connections stopped echoing: {expected}", result.Stderr, StringComparison.Ordinal);
            using var json = JsonDocument.Parse(result.StdoutText);
            Assert.Equal(2, json.RootElement.GetProperty("no_echo").GetInt32());
        }
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task An_unskipped_greeting_is_a_mismatch_with_a_hint_and_counts_stay_positive(string engine)
    {
        await using var server = new EchoServer(new EchoServerOptions { Port = 0, SendGreeting = true });
        server.Start();
        for (int run = 0; run < 6; run++)
        {
            var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", $"127.0.0.1:{server.LocalEndPoints[0].Port}",
                "-t", "300ms", "--warmup", "0", "--skip-greeting", "0", "--engine", engine, "--json");
            Assert.True(result.ExitCode == 9, result.ToString());
            Assert.Contains("the server sent more than it was sent (a greeting?", result.Stderr, StringComparison.Ordinal);
            using var json = JsonDocument.Parse(result.StdoutText);
            Assert.True(json.RootElement.GetProperty("msgs").GetInt64() >= 0, result.StdoutText);
            Assert.True(json.RootElement.GetProperty("msgs_per_s").GetDouble() >= 0, result.StdoutText);
        }
    }
}

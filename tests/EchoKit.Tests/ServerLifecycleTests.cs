using System.Net;
using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>Starting, refusing and stopping, as an embedder and an operator see them.</summary>
public sealed class ServerLifecycleTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Connections_aborted_at_the_shutdown_timeout_are_one_log_line_whatever_the_loops(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--loops", "2", "--quiet", "--shutdown-timeout", "500ms");
        await using var _ = server;
        // Clients that never close: the drain's FIN is not answered, so all four are aborted at the timeout.
        var clients = await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => ConnectAsync(port)));
        foreach (var client in clients)
        {
            await ReceiveExactlyAsync(client, GreetingBytes.Length);
        }

        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        var lines = server.StandardErrorText.Split('\n').Where(l => l.Contains("shutdown timeout: aborting", StringComparison.Ordinal)).ToArray();
        Assert.True(lines.Length == 1, server.StandardErrorText);
        Assert.Contains("aborting 4 connections", lines[0], StringComparison.Ordinal);
        foreach (var client in clients)
        {
            client.Dispose();
        }
    }

    [Theory]
    [InlineData(EchoEngine.Epoll)]
    [InlineData(EchoEngine.Socket)]
    public async Task A_refused_connection_reports_the_id_it_was_given(EchoEngine engine)
    {
        Assert.SkipWhen(engine == EchoEngine.Epoll && !EchoServer.EpollSupported, "the epoll engine runs on Linux x86-64 only");
        var closed = new List<ClosedConnection>();
        await using var server = new EchoServer(new EchoServerOptions { Port = 0, Family = AddressFamily.InterNetwork, MaxConnections = 1, Engine = engine });
        server.ConnectionClosed += c =>
        {
            lock (closed)
            {
                closed.Add(c);
            }
        };
        server.Start();
        int port = server.LocalEndPoints[0].Port;
        using var first = await ConnectAsync(port);
        await ReceiveExactlyAsync(first, GreetingBytes.Length);
        using var second = await ConnectAsync(port);
        await ReceiveToEndAsync(second); // "server busy", then closed
        await ProcStats.WaitUntilAsync(() => { lock (closed) { return closed.Count == 1; } }, Deadline, () => "no close reported");
        var refused = Assert.Single(closed);
        Assert.Equal(CloseReason.ServerBusy, refused.Reason);
        Assert.Equal(2, refused.Id); // the first connection is 1
    }

    [Theory]
    [InlineData(EchoEngine.Epoll)]
    [InlineData(EchoEngine.Socket)]
    public async Task DisposeAsync_after_an_unawaited_StopAsync_waits_for_the_drain(EchoEngine engine)
    {
        Assert.SkipWhen(engine == EchoEngine.Epoll && !EchoServer.EpollSupported, "the epoll engine runs on Linux x86-64 only");
        var server = new EchoServer(new EchoServerOptions { Port = 0, Family = AddressFamily.InterNetwork, Engine = engine, ShutdownTimeout = TimeSpan.FromSeconds(1) });
        server.Start();
        using var client = await ConnectAsync(server.LocalEndPoints[0].Port); // never closes: aborted at the 1 s timeout
        await ReceiveExactlyAsync(client, GreetingBytes.Length);
        _ = server.StopAsync();
        await server.DisposeAsync();
        Assert.Equal(0, server.ActiveConnections); // returned only once the drain was over
    }
}

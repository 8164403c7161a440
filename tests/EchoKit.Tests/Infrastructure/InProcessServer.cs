using System.Net.Sockets;
using EchoKit.Internal.Stages;

namespace EchoKit.Tests.Infrastructure;

/// <summary>
/// An EchoServer in the test process on an OS-chosen IPv4 loopback port, with what it logs and every close it
/// reports kept for assertions; skipped where the engine asked for cannot run.
/// </summary>
public sealed class InProcessServer : IAsyncDisposable
{
    private readonly List<ClosedConnection> _closed = [];

    private InProcessServer(EchoServer server, CapturingLogger logger)
    {
        Server = server;
        Logger = logger;
        server.ConnectionClosed += c =>
        {
            lock (_closed)
            {
                _closed.Add(c);
            }
        };
    }

    public EchoServer Server { get; }

    public CapturingLogger Logger { get; }

    public int Port => Server.LocalEndPoints[0].Port;

    internal static InProcessServer Start(EchoEngine engine, params IConnectionStage[] stages)
    {
        Assert.SkipWhen(engine == EchoEngine.Epoll && !EchoServer.EpollSupported, "the epoll engine runs on Linux x86-64 only");
        var logger = new CapturingLogger();
        var server = new InProcessServer(
            new EchoServer(new EchoServerOptions { Port = 0, Family = AddressFamily.InterNetwork, Engine = engine, Stages = stages }, logger), logger);
        server.Server.Start();
        return server;
    }

    /// <summary>Waits until <paramref name="count"/> connections have closed; returns them in the order they did.</summary>
    public async Task<ClosedConnection[]> ClosedAsync(int count)
    {
        await ProcStats.WaitUntilAsync(() => { lock (_closed) { return _closed.Count >= count; } }, Loopback.Deadline, () => string.Join('\n', Logger.Lines));
        lock (_closed)
        {
            return [.. _closed];
        }
    }

    public ValueTask DisposeAsync() => Server.DisposeAsync();
}

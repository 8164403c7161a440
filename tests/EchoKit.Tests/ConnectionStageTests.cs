using System.Net;
using System.Net.Sockets;
using EchoKit.Internal.Stages;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>The connection stage seam: a stage runs on every new connection, on both engines, before the greeting.</summary>
public sealed class ConnectionStageTests
{
    /// <summary>A stage as allow/deny will be: refuses one source address, with a reason.</summary>
    private sealed class RefuseFrom(IPAddress refused) : IConnectionStage
    {
        public StageVerdict OnAccepted(ConnectionContext connection) =>
            connection.Peer is IPEndPoint ip && ip.Address.Equals(refused)
                ? StageVerdict.Refuse($"{refused} is not welcome (test stage)")
                : StageVerdict.Continue;
    }

    /// <summary>A stage as PROXY protocol will be: the peer's address is replaced by the one it names.</summary>
    private sealed class ReplacePeer(IPEndPoint real) : IConnectionStage
    {
        public StageVerdict OnAccepted(ConnectionContext connection)
        {
            connection.Peer = real;
            return StageVerdict.Continue;
        }
    }

    private static async Task<Socket> ConnectFromAsync(IPAddress source, int port)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(source, 0));
        await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).WaitAsync(Deadline);
        return socket;
    }

    [Theory]
    [InlineData(EchoEngine.Epoll)]
    [InlineData(EchoEngine.Socket)]
    public async Task A_stage_that_refuses_closes_before_the_greeting_and_its_reason_reaches_the_log_and_the_close(EchoEngine engine)
    {
        var refused = IPAddress.Parse("127.0.0.2");
        await using var server = InProcessServer.Start(engine, new RefuseFrom(refused));
        int port = server.Port;

        using (var denied = await ConnectFromAsync(refused, port))
        {
            Assert.Empty(await ReceiveToEndAsync(denied)); // closed with nothing sent: no greeting
        }

        using (var welcome = await ConnectFromAsync(IPAddress.Loopback, port))
        {
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(welcome, GreetingBytes.Length));
        }

        var refusal = (await server.ClosedAsync(2)).Single(c => c.Reason == CloseReason.Refused);
        Assert.Equal("127.0.0.2 is not welcome (test stage)", refusal.Detail);
        Assert.Equal(1, refusal.Id);
        Assert.Contains(server.Logger.Lines, l => l.Contains("connection 1 from 127.0.0.2:", StringComparison.Ordinal)
            && l.Contains("closed: refused: 127.0.0.2 is not welcome (test stage)", StringComparison.Ordinal));
        Assert.Equal(0, server.Server.ActiveConnections);
    }

    [Theory]
    [InlineData(EchoEngine.Epoll)]
    [InlineData(EchoEngine.Socket)]
    public async Task A_stage_can_replace_the_peer_that_logs_and_closes_see(EchoEngine engine)
    {
        var real = new IPEndPoint(IPAddress.Parse("192.0.2.7"), 4242); // TEST-NET-1: never contacted, only named
        await using var server = InProcessServer.Start(engine, new ReplacePeer(real));
        using (var client = await ConnectAsync(server.Port))
        {
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
        }

        Assert.Equal(real, Assert.Single(await server.ClosedAsync(1)).Peer);
        Assert.Contains(server.Logger.Lines, l => l.Contains("accepted from 192.0.2.7:4242", StringComparison.Ordinal));
    }
}

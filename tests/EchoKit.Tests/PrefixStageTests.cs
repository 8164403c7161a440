using System.Net;
using System.Net.Sockets;
using System.Text;
using EchoKit.Internal.Stages;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// Prefix stages (what PROXY protocol will be): a header read whole however it is split, the payload after it
/// echoed once after the greeting, and a header too long, wrong or never finished refused with its reason.
/// </summary>
public sealed class PrefixStageTests
{
    /// <summary>A test header: <c>HELLO ADDRESS:PORT\n</c>, at most 64 bytes; the peer becomes that address.</summary>
    private sealed class HelloHeader : IPrefixStage
    {
        public int MaxPrefixBytes => 64;

        public TimeSpan Timeout => TimeSpan.FromMilliseconds(500);

        public StageVerdict OnAccepted(ConnectionContext connection) => StageVerdict.Continue;

        public PrefixVerdict OnPrefix(ReadOnlySpan<byte> received, ConnectionContext connection)
        {
            int newline = received.IndexOf((byte)'\n');
            if (newline < 0)
            {
                return PrefixVerdict.NeedMore;
            }

            string line = Encoding.ASCII.GetString(received[..newline]);
            if (!line.StartsWith("HELLO ", StringComparison.Ordinal) || !IPEndPoint.TryParse(line[6..], out var real))
            {
                return PrefixVerdict.Refuse($"bad header '{line}'");
            }

            connection.Peer = real;
            return PrefixVerdict.Done(newline + 1);
        }
    }

    [Theory]
    [InlineData(EchoEngine.Epoll, true)]
    [InlineData(EchoEngine.Epoll, false)]
    [InlineData(EchoEngine.Socket, true)]
    [InlineData(EchoEngine.Socket, false)]
    public async Task A_header_split_a_byte_at_a_time_is_read_whole_and_the_payload_behind_it_is_echoed_once(EchoEngine engine, bool byteAtATime)
    {
        await using var server = InProcessServer.Start(engine, new HelloHeader());
        using var client = await ConnectAsync(server.Port);
        byte[] header = "HELLO 203.0.113.9:4711\n"u8.ToArray();
        byte[] payload = "payload after the header"u8.ToArray();
        if (byteAtATime)
        {
            foreach (byte b in header[..^1])
            {
                await client.SendAsync(new[] { b }); // one segment each (TCP_NODELAY)
            }

            await client.SendAsync((byte[])[header[^1], .. payload]); // the header's last byte and the payload together
        }
        else
        {
            await client.SendAsync((byte[])[.. header, .. payload]);
        }

        byte[] expected = [.. GreetingBytes, .. payload];
        Assert.Equal(expected, await ReceiveExactlyAsync(client, expected.Length));
        await client.SendAsync("more"u8.ToArray());
        Assert.Equal("more"u8.ToArray(), await ReceiveExactlyAsync(client, 4));
        client.Shutdown(SocketShutdown.Send);
        Assert.Empty(await ReceiveToEndAsync(client)); // nothing echoed twice

        var done = Assert.Single(await server.ClosedAsync(1));
        Assert.Equal(CloseReason.PeerClosed, done.Reason);
        Assert.Equal(IPEndPoint.Parse("203.0.113.9:4711"), done.Peer);
        Assert.Equal(header.Length + payload.Length + 4, done.BytesIn);
    }

    [Theory]
    [InlineData(EchoEngine.Epoll, "no newline in sixty-four bytes.................................................", "HelloHeader: prefix longer than 64 bytes")]
    [InlineData(EchoEngine.Socket, "no newline in sixty-four bytes.................................................", "HelloHeader: prefix longer than 64 bytes")]
    [InlineData(EchoEngine.Epoll, "GET / HTTP/1.1\r\n", "bad header 'GET / HTTP/1.1\r'")]
    [InlineData(EchoEngine.Socket, "GET / HTTP/1.1\r\n", "bad header 'GET / HTTP/1.1\r'")]
    [InlineData(EchoEngine.Epoll, "HELLO 203.0.113", "HelloHeader: prefix not complete within 500ms")]
    [InlineData(EchoEngine.Socket, "HELLO 203.0.113", "HelloHeader: prefix not complete within 500ms")]
    public async Task A_header_too_long_wrong_or_unfinished_is_refused_before_the_greeting_with_its_reason(EchoEngine engine, string sent, string reason)
    {
        await using var server = InProcessServer.Start(engine, new HelloHeader());
        using var client = await ConnectAsync(server.Port);
        await client.SendAsync(Encoding.ASCII.GetBytes(sent));
        try
        {
            Assert.Empty(await ReceiveToEndAsync(client)); // closed with nothing sent: no greeting, no echo
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            // Closed with unread bytes of ours in its buffer: an RST, which says the same.
        }

        var refused = Assert.Single(await server.ClosedAsync(1));
        Assert.Equal(CloseReason.Refused, refused.Reason);
        Assert.Equal(reason, refused.Detail);
        Assert.Contains(server.Logger.Lines, l => l.Contains("closed: refused: " + reason, StringComparison.Ordinal));
        Assert.Equal(0, server.Server.ActiveConnections);
    }
}

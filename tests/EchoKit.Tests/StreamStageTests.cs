using System.Net.Sockets;
using EchoKit.Internal.Stages;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// Stream stages (what TLS will be): the greeting and the echo go through the stream a stage returns, on both
/// engines (the epoll engine hands such connections to a stream loop); a wrap that fails or never finishes is
/// refused with its reason; bytes that came behind a prefix reach the wrapper first.
/// </summary>
public sealed class StreamStageTests
{
    private const byte Key = 0x5A;

    /// <summary>Every byte XORed with a key both ways: a wrapper whose effect a test can see on the wire.</summary>
    private sealed class XorStage(bool fail = false, bool hang = false) : IStreamStage
    {
        public TimeSpan Timeout => TimeSpan.FromMilliseconds(500);

        public StageVerdict OnAccepted(ConnectionContext connection) => StageVerdict.Continue;

        public async ValueTask<Stream> WrapAsync(Stream transport, ConnectionContext connection, CancellationToken cancellationToken)
        {
            if (hang)
            {
                await Task.Delay(Timeout * 10, cancellationToken); // a handshake that never finishes
            }

            return fail ? throw new IOException("handshake failed (test)") : new XorStream(transport);
        }
    }

    private sealed class XorStream(Stream inner) : Stream
    {
        public override bool CanRead => true;

        public override bool CanWrite => true;

        public override bool CanSeek => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            int n = await inner.ReadAsync(buffer, cancellationToken);
            Xor(buffer.Span[..n]);
            return n;
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            byte[] copy = buffer.ToArray();
            Xor(copy);
            return inner.WriteAsync(copy, cancellationToken);
        }

        public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

        public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

        public override void Flush() => inner.Flush();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }

    private static void Xor(Span<byte> bytes)
    {
        for (int i = 0; i < bytes.Length; i++)
        {
            bytes[i] ^= Key;
        }
    }

    private static byte[] Xored(ReadOnlySpan<byte> bytes)
    {
        byte[] copy = bytes.ToArray();
        Xor(copy);
        return copy;
    }

    /// <summary>The test header of PrefixStageTests' kind: <c>HI\n</c>.</summary>
    private sealed class HiHeader : IPrefixStage
    {
        public int MaxPrefixBytes => 16;

        public TimeSpan Timeout => TimeSpan.FromSeconds(5);

        public StageVerdict OnAccepted(ConnectionContext connection) => StageVerdict.Continue;

        public PrefixVerdict OnPrefix(ReadOnlySpan<byte> received, ConnectionContext connection) =>
            received.Length < 3 ? PrefixVerdict.NeedMore
            : received[..3].SequenceEqual("HI\n"u8) ? PrefixVerdict.Done(3) : PrefixVerdict.Refuse("no HI");
    }

    [Theory]
    [InlineData(EchoEngine.Epoll)]
    [InlineData(EchoEngine.Socket)]
    public async Task The_greeting_and_the_echo_go_through_the_wrapped_stream(EchoEngine engine)
    {
        await using var server = InProcessServer.Start(engine, new XorStage());
        using var client = await ConnectAsync(server.Port);
        Assert.Equal(Xored(GreetingBytes), await ReceiveExactlyAsync(client, GreetingBytes.Length)); // on the wire: wrapped
        var payload = ServeProcessTests.RandomBytes(300_000);
        var echo = ReceiveExactlyAsync(client, payload.Length);
        await client.SendAsync(Xored(payload));
        Assert.Equal(Xored(payload), await echo);
        client.Shutdown(SocketShutdown.Send);
        Assert.Empty(await ReceiveToEndAsync(client)); // FIN after the echo, nothing more
        var closed = Assert.Single(await server.ClosedAsync(1));
        Assert.Equal(CloseReason.PeerClosed, closed.Reason);
        Assert.Equal(payload.Length, closed.BytesIn);
    }

    [Theory]
    [InlineData(EchoEngine.Epoll, false, "XorStage: handshake failed (test)")]
    [InlineData(EchoEngine.Socket, false, "XorStage: handshake failed (test)")]
    [InlineData(EchoEngine.Epoll, true, "XorStage: not complete within 500ms")]
    [InlineData(EchoEngine.Socket, true, "XorStage: not complete within 500ms")]
    public async Task A_wrap_that_fails_or_never_finishes_is_refused_with_its_reason(EchoEngine engine, bool hang, string reason)
    {
        await using var server = InProcessServer.Start(engine, new XorStage(fail: !hang, hang: hang));
        using var client = await ConnectAsync(server.Port);
        Assert.Empty(await ReceiveToEndAsync(client)); // no greeting
        var refused = Assert.Single(await server.ClosedAsync(1));
        Assert.Equal(CloseReason.Refused, refused.Reason);
        Assert.Equal(reason, refused.Detail);
        Assert.Contains(server.Logger.Lines, l => l.Contains("closed: refused: " + reason, StringComparison.Ordinal));
    }

    [Theory]
    [InlineData(EchoEngine.Epoll)]
    [InlineData(EchoEngine.Socket)]
    public async Task Bytes_behind_a_prefix_reach_the_wrapper_first(EchoEngine engine)
    {
        await using var server = InProcessServer.Start(engine, new HiHeader(), new XorStage());
        using var client = await ConnectAsync(server.Port);
        await client.SendAsync((byte[])[.. "HI\n"u8, .. Xored("first"u8)]); // header and wrapped payload in one segment
        byte[] expected = [.. Xored(GreetingBytes), .. Xored("first"u8)];
        Assert.Equal(expected, await ReceiveExactlyAsync(client, expected.Length));
    }

    [Theory]
    [InlineData(EchoEngine.Epoll)]
    [InlineData(EchoEngine.Socket)]
    public async Task Wrapped_connections_are_drained_at_stop(EchoEngine engine)
    {
        await using var server = InProcessServer.Start(engine, new XorStage());
        using var client = await ConnectAsync(server.Port);
        Assert.Equal(Xored(GreetingBytes), await ReceiveExactlyAsync(client, GreetingBytes.Length));
        var stopping = server.Server.StopAsync();
        Assert.Empty(await ReceiveToEndAsync(client)); // the drain's FIN
        client.Dispose();
        await stopping.WaitAsync(Deadline);
        Assert.Equal(CloseReason.ServerShutdown, Assert.Single(await server.ClosedAsync(1)).Reason);
    }
}

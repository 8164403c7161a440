using System.Buffers;
using System.Net.Sockets;
using EchoKit.Client;

namespace EchoKit.Internal.Sockets;

/// <summary>
/// The socket as the stream a wrapper (TLS) reads and writes, in place of NetworkStream (Kestrel's shape: SslStream
/// over the transport's own adapter). SslStream asks for zero bytes before each read it cannot serve from its own
/// buffer, so that an idle connection holds no buffer; NetworkStream answers each such read with a recv of its own
/// (a 1-byte MSG_PEEK) before the real recv: two system calls per TLS record. Here a zero-byte read waits for
/// data the same way and then takes everything the kernel has (up to 64 KiB, often several records) into a
/// pooled buffer that the following reads drain without a system call; the buffer goes back to the pool as soon
/// as it is empty, so an idle connection still holds none. Writes go straight to the socket.
/// </summary>
internal sealed class SocketTransportStream(Socket socket) : Stream
{
    private const int ChunkBytes = 64 * 1024;

    private byte[]? _pending;
    private int _start;
    private int _end;

    public override bool CanRead => true;

    public override bool CanWrite => true;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        if (_pending is not null)
        {
            return ValueTask.FromResult(Drain(destination.Span));
        }

        return destination.Length > 0
            ? socket.ReceiveAsync(destination, SocketFlags.None, cancellationToken) // mid-record: straight into SslStream's buffer
            : WaitThenTakeAllAsync(cancellationToken);
    }

    [System.Runtime.CompilerServices.AsyncMethodBuilder(typeof(System.Runtime.CompilerServices.PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<int> WaitThenTakeAllAsync(CancellationToken cancellationToken)
    {
        // A zero-byte read: wait until there is data (holding no buffer), then take all of it at once.
        await socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, cancellationToken).ConfigureAwait(false);
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkBytes);
        int got = socket.Receive(buffer, 0, buffer.Length, SocketFlags.None, out SocketError error);
        if (error != SocketError.Success || got == 0)
        {
            ArrayPool<byte>.Shared.Return(buffer);
            return error is SocketError.Success or SocketError.WouldBlock
                ? 0 // EOF (the real read that follows says so) or nothing after all (it waits)
                : throw new IOException(SocketErrorText.Describe(error), new SocketException((int)error));
        }

        (_pending, _start, _end) = (buffer, 0, got);
        return 0;
    }

    private int Drain(Span<byte> destination)
    {
        int n = Math.Min(destination.Length, _end - _start);
        _pending.AsSpan(_start, n).CopyTo(destination);
        _start += n;
        if (_start == _end)
        {
            ArrayPool<byte>.Shared.Return(_pending!);
            _pending = null;
        }

        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override int Read(byte[] buffer, int offset, int count) =>
        _pending is not null ? Drain(buffer.AsSpan(offset, count)) : socket.Receive(buffer, offset, count, SocketFlags.None);

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        socket.SendAllAsync(buffer, cancellationToken);

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => socket.Send(buffer, offset, count, SocketFlags.None);

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing && _pending is { } pending)
        {
            _pending = null;
            ArrayPool<byte>.Shared.Return(pending);
        }

        base.Dispose(disposing);
    }
}

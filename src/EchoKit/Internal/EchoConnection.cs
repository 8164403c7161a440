using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace EchoKit.Internal;

/// <summary>
/// One accepted stream connection: greeting, then a receive → send loop.
///
/// Design:
/// - The loop waits for data with a zero-byte receive, so an idle connection holds no buffer;
///   only once bytes are readable does it rent one from the pool, and it returns it as soon as
///   they are echoed. The server never holds more than one receive buffer per connection:
///   a peer that does not read stalls our send, which stops our reads, so TCP throttles it.
/// - Nothing on the hot path allocates: ValueTask socket calls (the Socket caches its awaitable
///   event args), a pooled buffer, and no per-operation cancellation token or timer. Timeouts are
///   enforced from outside by <see cref="ConnectionHeartbeat"/>, which reads the timestamps below
///   and calls <see cref="Abort"/>.
/// - Every way out goes through <see cref="TrySetReason"/>: the first reason recorded wins and is
///   what the log line, the <see cref="ClosedConnection"/> event and the tests see.
/// </summary>
internal sealed class EchoConnection
{
    private readonly Socket _socket;
    private readonly EchoServer _server;
    private readonly CancellationTokenSource _drainSignal = new();
    private readonly long _startTimestamp = Stopwatch.GetTimestamp();
    private int _reason;
    private SocketError _error;
    private volatile bool _draining;
    private long _lastReceiveTicks = Environment.TickCount64;
    private long _sendStartedTicks;

    public EchoConnection(long id, Socket socket, EchoServer server)
    {
        Id = id;
        _socket = socket;
        _server = server;
        Peer = EndPointText.Normalize(socket.RemoteEndPoint);
    }

    public long Id { get; }

    public EndPoint? Peer { get; }

    public long BytesIn { get; private set; }

    public long BytesOut { get; private set; }

    public CloseReason Reason => (CloseReason)Volatile.Read(ref _reason);

    /// <summary>Environment.TickCount64 of the last byte received (or of the accept).</summary>
    public long LastReceiveTicks => Volatile.Read(ref _lastReceiveTicks);

    /// <summary>Environment.TickCount64 when the pending send started, 0 when none is pending.</summary>
    public long SendStartedTicks => Volatile.Read(ref _sendStartedTicks);

    public async Task RunAsync()
    {
        var options = _server.Options;
        try
        {
            if (options.SendGreeting)
            {
                await SendAllAsync(Greeting.Bytes).ConfigureAwait(false);
            }

            await EchoUntilEndAsync(options.ReceiveBufferSize).ConfigureAwait(false);

            // Everything received has been echoed: say so with a FIN.
            _socket.Shutdown(SocketShutdown.Send);
            if (Reason == CloseReason.ServerShutdown)
            {
                await DiscardUntilPeerClosesAsync().ConfigureAwait(false);
            }
        }
        catch (SocketException e)
        {
            _error = e.SocketErrorCode;
            TrySetReason(SocketErrorText.IsPeerReset(e.SocketErrorCode) ? CloseReason.PeerReset : CloseReason.Error);
        }
        catch (ObjectDisposedException)
        {
            // Abort() closed the socket under a pending call; it recorded the reason first.
            TrySetReason(CloseReason.Error);
        }
        finally
        {
            _socket.Dispose();
            _drainSignal.Dispose();
            _server.OnConnectionClosed(this, new ClosedConnection(
                Id, Peer, Reason, _error, BytesIn, BytesOut, Stopwatch.GetElapsedTime(_startTimestamp)));
        }
    }

    private async ValueTask EchoUntilEndAsync(int bufferSize)
    {
        var pool = ArrayPool<byte>.Shared;
        while (true)
        {
            if (!_draining)
            {
                try
                {
                    // Wait for readability without holding a buffer (returns 0 for data and for EOF alike).
                    await _socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None, _drainSignal.Token).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    // BeginDrain(): fall through and echo only what is already here.
                }
            }

            if (_draining && _socket.Available == 0)
            {
                TrySetReason(CloseReason.ServerShutdown);
                return;
            }

            byte[] buffer = pool.Rent(bufferSize);
            try
            {
                int received = await _socket.ReceiveAsync(buffer.AsMemory(0, bufferSize), SocketFlags.None).ConfigureAwait(false);
                if (received == 0)
                {
                    TrySetReason(CloseReason.PeerClosed);
                    return;
                }

                Volatile.Write(ref _lastReceiveTicks, Environment.TickCount64);
                BytesIn += received;
                var payload = buffer.AsMemory(0, received);
                await SendAllAsync(payload).ConfigureAwait(false);
                if (_server.PayloadSink is { } sink)
                {
                    await sink.WriteAsync(Id, payload).ConfigureAwait(false);
                }
            }
            finally
            {
                pool.Return(buffer);
            }
        }
    }

    private async ValueTask SendAllAsync(ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty)
        {
            Volatile.Write(ref _sendStartedTicks, Environment.TickCount64);
            int sent = await _socket.SendAsync(data, SocketFlags.None).ConfigureAwait(false);
            BytesOut += sent;
            data = data[sent..];
        }

        Volatile.Write(ref _sendStartedTicks, 0);
    }

    /// <summary>
    /// After our FIN at shutdown, read (and drop) until the peer closes too: closing a socket
    /// with unread received data makes the kernel send an RST instead of a clean close.
    /// Bounded by the server's shutdown timeout, which aborts us.
    /// </summary>
    private async ValueTask DiscardUntilPeerClosesAsync()
    {
        byte[] scratch = ArrayPool<byte>.Shared.Rent(4096);
        try
        {
            int received;
            while ((received = await _socket.ReceiveAsync(scratch, SocketFlags.None).ConfigureAwait(false)) > 0)
            {
                BytesIn += received;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    /// <summary>Graceful shutdown: echo what has already arrived, then FIN.</summary>
    public void BeginDrain()
    {
        _draining = true;
        try
        {
            _drainSignal.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Already finished.
        }
    }

    /// <summary>Ends the connection now. With <paramref name="reset"/> the peer gets an RST (nothing more is sent).</summary>
    public void Abort(CloseReason reason, bool reset)
    {
        if (!TrySetReason(reason))
        {
            return;
        }

        try
        {
            if (reset)
            {
                _socket.LingerState = new LingerOption(true, 0);
            }
            else
            {
                _socket.Shutdown(SocketShutdown.Both);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Already gone; Dispose below is what matters.
        }

        _socket.Dispose();
    }

    private bool TrySetReason(CloseReason reason) =>
        Interlocked.CompareExchange(ref _reason, (int)reason, (int)CloseReason.None) == (int)CloseReason.None;
}

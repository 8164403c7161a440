using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace EchoKit.Internal.Sockets;

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
    private readonly SocketStreamEngine _engine;
    private readonly long _startTimestamp = Stopwatch.GetTimestamp();
    private int _reason;
    private SocketError _error;
    private volatile bool _finSent;
    private volatile bool _waiting;
    private long _lastReceiveMs = MonotonicClock.Milliseconds;
    private long _sendStartedMs;
    private long _lastSendProgressMs;
    private string? _detail; // why a stage refused it
    private volatile bool _sinkWaiting;
    private int _lastUnsent; // the heartbeat's alone
    private TaskCompletionSource? _aborted; // made when the connection first waits for the payload sink

    private readonly IReadOnlyList<Stages.IStreamStage> _streamStages;
    private volatile Stream? _wrapped; // the stream a stage wrapped the socket in, once the wrap is done

    public EchoConnection(long id, Socket socket, EndPoint? peer, EchoServer server, SocketStreamEngine engine, IReadOnlyList<Stages.IStreamStage> streamStages)
    {
        Id = id;
        _streamStages = streamStages;
        _socket = socket;
        _server = server;
        _engine = engine;
        Peer = peer; // as admission saw it (a stage may have replaced it)
        // Synchronous calls return EAGAIN instead of blocking; async calls are unaffected.
        socket.Blocking = false;
    }

    public long Id { get; }

    /// <summary>The peer as logs and close events see it (a prefix stage may replace it).</summary>
    public EndPoint? Peer { get; private set; }

    public long BytesIn { get; private set; }

    public long BytesOut { get; private set; }

    /// <summary>Its close has been reported (its bytes are in the closed connections' sum from now on).</summary>
    public volatile bool Reported;

    public CloseReason Reason => (CloseReason)Volatile.Read(ref _reason);

    /// <summary>MonotonicClock.Milliseconds of the last byte received (or of the accept).</summary>
    public long LastReceiveMs => Volatile.Read(ref _lastReceiveMs);

    /// <summary>Not waiting for the peer: reading and echoing, or held back by the payload sink (not idle, whatever the clock says).</summary>
    public bool Busy => !_waiting || _sinkWaiting;

    /// <summary>MonotonicClock.Milliseconds when a held-up send last completed (a slow reader took it).</summary>
    public long LastSendProgressMs => Volatile.Read(ref _lastSendProgressMs);

    /// <summary>
    /// Asked on the timer's thread before an idle close: bytes waiting, our send queue still moving, or the receive
    /// loop busy or through a whole round since <paramref name="lastReceiveSeen"/> was read (it stops waiting before
    /// it reads and stamps what it read before it waits again, so asked in this order no bytes slip between).
    /// </summary>
    public bool StillActive(long lastReceiveSeen)
    {
        try
        {
            return !_waiting || TimeoutPolicy.KernelSaysActive((int)_socket.Handle, ref _lastUnsent) || !_waiting
                || LastReceiveMs != lastReceiveSeen;
        }
        catch (ObjectDisposedException)
        {
            return false; // ending anyway
        }
    }

    /// <summary>MonotonicClock.Milliseconds when the pending send started, 0 when none is pending.</summary>
    public long SendStartedMs => Volatile.Read(ref _sendStartedMs);

    public async Task RunAsync()
    {
        var options = _server.Options;
        try
        {
            byte[] payload = [];
            if (options.PrefixStages.Count > 0
                && Stages.PrefixReader.For(options.PrefixStages, new Stages.ConnectionContext(Id, (int)_socket.Handle, Peer), MonotonicClock.Milliseconds, _server.AdmitAfterPrefix) is { } reader)
            {
                if (await ReadPrefixAsync(reader) is not { } afterPrefix)
                {
                    return; // refused, timed out or closed before its prefix was read
                }

                payload = afterPrefix;
            }

            if (_streamStages.Count > 0)
            {
                await RunWrappedAsync(options, payload).ConfigureAwait(false);
                return;
            }

            if (options.SendGreeting && !Succeeded(await SendAllAsync(Greeting.Bytes).ConfigureAwait(false)))
            {
                return;
            }

            if (payload.Length > 0)
            {
                // The bytes that came with the prefix: echoed once, after the greeting.
                if (!Succeeded(await SendAllAsync(payload).ConfigureAwait(false)))
                {
                    return;
                }

                if (_server.PayloadSink is { } sink)
                {
                    await sink.WriteAsync(Id, payload).ConfigureAwait(false);
                }
            }

            if (!await EchoUntilEndAsync(options.ReceiveBufferSize).ConfigureAwait(false))
            {
                return;
            }

            if (!_finSent)
            {
                // The peer half-closed and everything it sent has been echoed: say so with a FIN.
                _finSent = true;
                _socket.Shutdown(SocketShutdown.Send);
            }
        }
        catch (SocketException e)
        {
            Succeeded(e.SocketErrorCode);
        }
        catch (ObjectDisposedException)
        {
            // Abort() closed the socket under a pending call; it recorded the reason first.
            TrySetReason(CloseReason.Error);
        }
        finally
        {
            _socket.Dispose();
            _engine.OnConnectionClosed(this, new ClosedConnection(
                Id, Peer, Reason, _error, BytesIn, BytesOut, Stopwatch.GetElapsedTime(_startTimestamp)) { Detail = _detail });
        }
    }

    /// <summary>
    /// Before the greeting: the prefix stages read the first bytes (<see cref="Stages.PrefixReader"/>), within their
    /// deadline. Returns the bytes after the prefixes, or null when the connection ends here (refused, timed out,
    /// closed by the peer, or failed: the reason is recorded).
    /// </summary>
    private async Task<byte[]?> ReadPrefixAsync(Stages.PrefixReader reader)
    {
        var context = reader.Context;
        using var deadline = new CancellationTokenSource(TimeSpan.FromMilliseconds(Math.Max(0, reader.DeadlineMs - MonotonicClock.Milliseconds)));
        var buffer = new byte[4096];
        while (true)
        {
            int received;
            try
            {
                received = await _socket.ReceiveAsync(buffer, SocketFlags.None, deadline.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                Refuse(reader.TimeoutReason); // a prefix that never completes cannot hold a connection
                return null;
            }

            if (received == 0)
            {
                TrySetReason(CloseReason.PeerClosed);
                return null;
            }

            Received(buffer.AsSpan(0, received));
            if (reader.Feed(buffer.AsSpan(0, received)) is not { } outcome)
            {
                continue;
            }

            if (outcome.RefusedBecause is { } reason)
            {
                Refuse(reason);
                return null;
            }

            Peer = context.Peer;
            return outcome.Payload;
        }
    }

    /// <summary>
    /// A connection whose byte stream a stage wraps (TLS): the wrap within its timeout, then the greeting and the
    /// echo through the wrapped stream, and a FIN once the peer has finished. The same timeouts and drain apply:
    /// while it waits for the peer it is "waiting"; a held-up write is a pending send.
    /// </summary>
    private async Task RunWrappedAsync(EchoServerOptions options, byte[] payload)
    {
        var context = new Stages.ConnectionContext(Id, (int)_socket.Handle, Peer);
        Stream stream = new PrefixedStream(payload, new SocketTransportStream(_socket));
        foreach (var stage in _streamStages)
        {
            using var deadline = new CancellationTokenSource(stage.Timeout);
            try
            {
                stream = await stage.WrapAsync(stream, context, deadline.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                Refuse($"{stage.Name}: not complete within {Durations.Format(stage.Timeout)}");
                return;
            }
            catch (Exception e) when (e is IOException or System.Security.Authentication.AuthenticationException or InvalidOperationException or SocketException)
            {
                Refuse($"{stage.Name}: {e.Message}");
                return;
            }
        }

        Peer = context.Peer;
        _wrapped = stream;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(options.ReceiveBufferSize);
        try
        {
            if (options.SendGreeting)
            {
                await WriteWrappedAsync(stream, Greeting.Bytes).ConfigureAwait(false);
            }

            while (true)
            {
                _waiting = true;
                int received = await stream.ReadAsync(buffer).ConfigureAwait(false);
                _waiting = false;
                if (received == 0)
                {
                    TrySetReason(_finSent ? CloseReason.ServerShutdown : CloseReason.PeerClosed);
                    break;
                }

                Received(buffer.AsSpan(0, received));
                if (_finSent)
                {
                    continue; // we already said goodbye at shutdown; drop what still arrives
                }

                await WriteWrappedAsync(stream, buffer.AsMemory(0, received)).ConfigureAwait(false);
                if (_server.PayloadSink is { } sink)
                {
                    await sink.WriteAsync(Id, buffer.AsMemory(0, received)).ConfigureAwait(false);
                }
            }

            if (!_finSent)
            {
                _finSent = true;
                await SendWrappedFinAsync(stream).ConfigureAwait(false);
            }
        }
        catch (IOException e) when (e.InnerException is SocketException se)
        {
            Succeeded(se.SocketErrorCode);
        }
        catch (IOException)
        {
            TrySetReason(CloseReason.Error);
        }
        catch (Exception e) when (e is InvalidOperationException or NotSupportedException or System.Security.Authentication.AuthenticationException)
        {
            TrySetReason(CloseReason.Error); // the wrapper failed mid-stream: this connection ends, nothing else
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The end of our side through the wrapper: TLS's close_notify first (the peer learns the data is complete,
    /// not cut), then the FIN. Never throws: the peer may be gone.
    /// </summary>
    private async Task SendWrappedFinAsync(Stream stream)
    {
        try
        {
            if (stream is System.Net.Security.SslStream ssl)
            {
                await ssl.ShutdownAsync().ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException or NotSupportedException)
        {
            // The peer is gone, or SslStream would not close while a read is in progress: the FIN still goes.
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // The connection is ending by itself.
        }
    }

    /// <summary>Bytes just read from the peer: activity for the idle timeout, counted, and dumped (--hex-dump).</summary>
    private void Received(ReadOnlySpan<byte> bytes)
    {
        Volatile.Write(ref _lastReceiveMs, MonotonicClock.Milliseconds);
        _server.Options.HexDump?.Record(Id, Peer, inbound: true, BytesIn, bytes);
        BytesIn += bytes.Length;
    }

    /// <summary>A write through the wrapper; while it waits, the send timeout watches it.</summary>
    private async ValueTask WriteWrappedAsync(Stream stream, ReadOnlyMemory<byte> data)
    {
        Volatile.Write(ref _sendStartedMs, MonotonicClock.Milliseconds);
        await stream.WriteAsync(data).ConfigureAwait(false);
        Volatile.Write(ref _sendStartedMs, 0);
        Volatile.Write(ref _lastSendProgressMs, MonotonicClock.Milliseconds);
        _server.Options.HexDump?.Record(Id, Peer, inbound: false, BytesOut, data.Span);
        BytesOut += data.Length;
    }

    private void Refuse(string reason)
    {
        _detail = reason;
        TrySetReason(CloseReason.Refused);
    }

    /// <summary>Records a failed call's error as the close reason (a reset, or another error); true for success.</summary>
    private bool Succeeded(SocketError error)
    {
        if (error == SocketError.Success)
        {
            return true;
        }

        _error = error;
        TrySetReason(SocketErrorText.IsPeerReset(error) ? CloseReason.PeerReset : CloseReason.Error);
        return false;
    }

    /// <summary>Echoes until the peer shuts down its send side (EOF): true; false when a socket error ended it.</summary>
    private async ValueTask<bool> EchoUntilEndAsync(int bufferSize)
    {
        var pool = ArrayPool<byte>.Shared;
        while (true)
        {
            // Wait for readability without holding a buffer (returns 0 for data and for EOF alike).
            // No cancellation token: a graceful stop wakes this wait by sending our FIN (see
            // TryFinishDrain), after which the peer closes; aborts close the socket.
            _waiting = true;
            await _socket.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None).ConfigureAwait(false);
            _waiting = false;

            byte[] buffer = pool.Rent(bufferSize);
            try
            {
                // Read without blocking: the wait can complete on a stale readiness event with nothing
                // to read, and then we go back to waiting rather than park holding the buffer. While
                // reads fill the whole buffer more is probably queued, so read again before waiting.
                int received;
                do
                {
                    received = _socket.Receive(buffer, 0, bufferSize, SocketFlags.None, out SocketError error);
                    if (error == SocketError.WouldBlock)
                    {
                        break;
                    }

                    if (!Succeeded(error))
                    {
                        return false;
                    }

                    if (received == 0)
                    {
                        TrySetReason(_finSent ? CloseReason.ServerShutdown : CloseReason.PeerClosed);
                        return true;
                    }

                    Received(buffer.AsSpan(0, received));
                    if (_finSent)
                    {
                        continue; // we already said goodbye at shutdown; drop what still arrives
                    }

                    var payload = buffer.AsMemory(0, received);
                    if (!Succeeded(await SendAllAsync(payload).ConfigureAwait(false)))
                    {
                        return false;
                    }

                    if (_server.PayloadSink is { } sink)
                    {
                        var written = sink.WriteAsync(Id, payload);
                        if (!written.IsCompletedSuccessfully && !await WaitForSinkAsync(written).ConfigureAwait(false))
                        {
                            return false;
                        }
                    }
                }
                while (received == bufferSize);
            }
            finally
            {
                pool.Return(buffer);
            }
        }
    }

    /// <summary>
    /// The sink is full (a slow stdout): wait for room, but not past an abort (the shutdown timeout), which
    /// a stdout that never moves again would otherwise outlast. False when aborted.
    /// </summary>
    private async ValueTask<bool> WaitForSinkAsync(ValueTask written)
    {
        var aborted = LazyInitializer.EnsureInitialized(ref _aborted, () => new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));
        if (Reason != CloseReason.None)
        {
            return false;
        }

        var sink = written.AsTask();
        _sinkWaiting = true;
        try
        {
            return await Task.WhenAny(sink, aborted.Task).ConfigureAwait(false) == sink;
        }
        finally
        {
            _sinkWaiting = false;
        }
    }

    /// <summary>
    /// Sends everything. First straight into the kernel's buffer with a non-blocking send (no async
    /// machinery, and a reset comes back as a code, not an exception); only when the buffer is full
    /// does it wait asynchronously, and that wait is what the send timeout watches.
    /// </summary>
    private async ValueTask<SocketError> SendAllAsync(ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty)
        {
            int sent = _socket.Send(data.Span, SocketFlags.None, out SocketError error);
            if (error == SocketError.WouldBlock)
            {
                Volatile.Write(ref _sendStartedMs, MonotonicClock.Milliseconds);
                sent = await _socket.SendAsync(data, SocketFlags.None).ConfigureAwait(false);
                Volatile.Write(ref _sendStartedMs, 0);
                Volatile.Write(ref _lastSendProgressMs, MonotonicClock.Milliseconds); // a slow reader took it: not idle
            }
            else if (error != SocketError.Success)
            {
                return error;
            }

            _server.Options.HexDump?.Record(Id, Peer, inbound: false, BytesOut, data.Span[..sent]);
            BytesOut += sent;
            data = data[sent..];
        }

        return SocketError.Success;
    }

    /// <summary>
    /// Graceful shutdown, called repeatedly by the server while it drains: once this connection
    /// waits for data and nothing has arrived for <paramref name="quietMs"/> (so whatever the peer
    /// sent before the signal has been echoed, including bytes that were still in flight), send
    /// our FIN. The peer then sees EOF and closes, which ends the receive loop without an RST.
    /// </summary>
    public void TryFinishDrain(long nowMs, long quietMs)
    {
        if (!TimeoutPolicy.ReadyForFin(nowMs, LastReceiveMs, quietMs, _finSent, busy: !_waiting))
        {
            return;
        }

        _finSent = true;
        if (_wrapped is { } wrapped)
        {
            _ = SendWrappedFinAsync(wrapped); // the read loop waits meanwhile: no write of ours is in progress
            return;
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // The connection is ending by itself.
        }
    }

    /// <summary>
    /// Ends the connection now (the first reason recorded is the one reported). With
    /// <paramref name="reset"/> the peer gets an RST and nothing more is sent.
    /// </summary>
    public void Abort(CloseReason reason, bool reset)
    {
        TrySetReason(reason);
        Volatile.Read(ref _aborted)?.TrySetResult();

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

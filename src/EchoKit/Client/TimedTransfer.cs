using System.Net.Sockets;

namespace EchoKit.Client;

/// <summary>
/// Socket sends and receives with a "no progress for this long" limit, done with cancellation
/// (Socket.SendTimeout/ReceiveTimeout only apply to synchronous calls).
/// </summary>
public static class TimedTransfer
{
    /// <summary>
    /// Sends everything; throws <see cref="TransferTimeoutException"/> when the send makes no progress for
    /// <paramref name="timeout"/>: a peer that reads slowly but keeps reading never trips it, however long the
    /// whole send takes. Progress is the peer acknowledging bytes (TCP_INFO's bytes_acked) or the send queue
    /// changing (SIOCOUTQ, for Unix sockets); where neither can be read, the whole send gets <paramref name="timeout"/>.
    /// </summary>
    public static async ValueTask SendAsync(Socket socket, ReadOnlyMemory<byte> data, TimeSpan? timeout, CancellationToken cancellationToken = default)
    {
        await WatchProgressAsync(socket, token => socket.SendAllAsync(data, token).AsTask(), timeout, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Sends through <paramref name="stream"/> (TLS over <paramref name="socket"/>), with the same "no progress"
    /// limit, watched on the socket underneath.
    /// </summary>
    internal static ValueTask SendAsync(Socket socket, Stream stream, ReadOnlyMemory<byte> data, TimeSpan? timeout, CancellationToken cancellationToken = default) =>
        WatchProgressAsync(socket, token => stream.WriteAsync(data, token).AsTask(), timeout, cancellationToken);

    private static async ValueTask WatchProgressAsync(Socket socket, Func<CancellationToken, Task> start, TimeSpan? timeout, CancellationToken cancellationToken)
    {
        if (timeout is null)
        {
            await start(cancellationToken).ConfigureAwait(false);
            return;
        }

        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var send = start(cts.Token);
        var step = TimeSpan.FromMilliseconds(Math.Clamp(timeout.Value.TotalMilliseconds / 4, 10, 1000));
        int fd = (int)socket.Handle;
        (long Acked, int Queued) last = (Internal.Epoll.Native.BytesAcked(fd), Internal.Epoll.Native.BytesUnsent(fd));
        long lastProgress = Environment.TickCount64;
        try
        {
            while (await Task.WhenAny(send, Task.Delay(step, cts.Token)).ConfigureAwait(false) != send)
            {
                (long Acked, int Queued) now = (Internal.Epoll.Native.BytesAcked(fd), Internal.Epoll.Native.BytesUnsent(fd));
                if (now != last)
                {
                    last = now;
                    lastProgress = Environment.TickCount64;
                }
                else if (Environment.TickCount64 - lastProgress >= (long)timeout.Value.TotalMilliseconds)
                {
                    cts.Cancel();
                    break;
                }
            }

            await send.ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TransferTimeoutException($"send timed out: no progress for {Durations.Format(timeout.Value)} (ETIMEDOUT); the peer is not reading");
        }
    }

    /// <summary>
    /// One receive. Returns the byte count (0: the peer shut down), or -1 when <paramref name="timeout"/>
    /// passed with no data and <paramref name="throwOnTimeout"/> is false; otherwise throws <see cref="TransferTimeoutException"/>.
    /// </summary>
    public static async ValueTask<int> ReceiveAsync(Socket socket, Memory<byte> buffer, TimeSpan? timeout, bool throwOnTimeout,
        CancellationToken cancellationToken = default)
    {
        return await ReceiveWithinAsync(token => socket.ReceiveAsync(buffer, SocketFlags.None, token), timeout, throwOnTimeout, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>One read from <paramref name="stream"/> (TLS), with the same timeout rules as the socket's.</summary>
    internal static ValueTask<int> ReceiveAsync(Stream stream, Memory<byte> buffer, TimeSpan? timeout, bool throwOnTimeout, CancellationToken cancellationToken = default) =>
        ReceiveWithinAsync(token => stream.ReadAsync(buffer, token), timeout, throwOnTimeout, cancellationToken);

    private static async ValueTask<int> ReceiveWithinAsync(Func<CancellationToken, ValueTask<int>> receive, TimeSpan? timeout, bool throwOnTimeout, CancellationToken cancellationToken)
    {
        if (timeout is null)
        {
            return await receive(cancellationToken).ConfigureAwait(false);
        }

        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        cts.CancelAfter(timeout.Value);
        try
        {
            return await receive(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return throwOnTimeout
                ? throw new TransferTimeoutException($"receive timed out: no data for {Durations.Format(timeout.Value)} (ETIMEDOUT)")
                : -1;
        }
    }
}

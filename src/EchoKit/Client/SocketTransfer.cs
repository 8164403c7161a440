using System.Net.Sockets;

namespace EchoKit.Client;

/// <summary>
/// Exact-length transfers on a connected stream socket, with timeouts through the
/// <see cref="CancellationToken"/> (Socket.ReceiveTimeout applies to synchronous calls only).
/// </summary>
public static class SocketTransfer
{
    /// <summary>
    /// Receives exactly <c>buffer.Length</c> bytes, however the kernel splits them.
    /// Throws <see cref="PeerClosedException"/> if the peer shuts down first, saying how many did arrive.
    /// </summary>
    public static async ValueTask ReceiveExactlyAsync(this Socket socket, Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(socket);
        await using var stream = new NetworkStream(socket, ownsSocket: false);
        int received = await stream.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
        if (received < buffer.Length)
        {
            throw new PeerClosedException(buffer.Length, received);
        }
    }

    /// <summary>Receives until the peer shuts down its send side; returns everything received.</summary>
    public static async Task<byte[]> ReceiveToEndAsync(this Socket socket, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(socket);
        await using var stream = new NetworkStream(socket, ownsSocket: false);
        using var all = new MemoryStream();
        await stream.CopyToAsync(all, cancellationToken).ConfigureAwait(false);
        return all.ToArray();
    }

    /// <summary>Sends every byte (looping over partial sends, which stream sockets may make).</summary>
    public static async ValueTask SendAllAsync(this Socket socket, ReadOnlyMemory<byte> data, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(socket);
        while (!data.IsEmpty)
        {
            int sent = await socket.SendAsync(data, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            data = data[sent..];
        }
    }
}

/// <summary>The peer closed the connection before the expected number of bytes arrived.</summary>
public sealed class PeerClosedException(int expected, int received)
    : EndOfStreamException($"connection closed by peer after {received} of {expected} bytes")
{
    public int Expected { get; } = expected;

    public int Received { get; } = received;
}

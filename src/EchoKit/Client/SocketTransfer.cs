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
        // Not NetworkStream.ReadExactlyAsync: NetworkStream refuses a socket whose send side is shut down.
        ArgumentNullException.ThrowIfNull(socket);
        int received = 0;
        while (received < buffer.Length)
        {
            int n = await socket.ReceiveAsync(buffer[received..], SocketFlags.None, cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                throw new PeerClosedException(buffer.Length, received);
            }

            received += n;
        }
    }

    /// <summary>Receives until the peer shuts down its send side; returns everything received.</summary>
    public static async Task<byte[]> ReceiveToEndAsync(this Socket socket, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(socket);
        using var all = new MemoryStream();
        var buffer = new byte[64 * 1024];
        int n;
        while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false)) > 0)
        {
            all.Write(buffer, 0, n);
        }

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

using System.Net.Security;
using System.Net.Sockets;

namespace EchoKit.Client;

/// <summary>
/// A connected client's byte channel: the socket itself, or TLS over it. Sends and receives keep
/// <see cref="TimedTransfer"/>'s rules either way; the end of our side is a FIN, after TLS's close_notify.
/// </summary>
internal sealed class ClientChannel(Socket socket, SslStream? tls = null) : IDisposable
{
    public Socket Socket { get; } = socket;

    public SslStream? Tls { get; } = tls;

    public ValueTask SendAsync(ReadOnlyMemory<byte> data, TimeSpan? timeout) => Tls is null
        ? TimedTransfer.SendAsync(Socket, data, timeout)
        : TimedTransfer.SendAsync(Socket, Tls, data, timeout);

    public ValueTask<int> ReceiveAsync(Memory<byte> buffer, TimeSpan? timeout, bool throwOnTimeout) => Tls is null
        ? TimedTransfer.ReceiveAsync(Socket, buffer, timeout, throwOnTimeout)
        : TimedTransfer.ReceiveAsync(Tls, buffer, timeout, throwOnTimeout);

    /// <summary>Our side is done: close_notify (TLS), then the FIN; the peer's side stays open for its echo.</summary>
    public async ValueTask ShutdownSendAsync()
    {
        if (Tls is not null)
        {
            try
            {
                await Tls.ShutdownAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is InvalidOperationException or NotSupportedException)
            {
                // SslStream can refuse ShutdownAsync while the receive side has a read in progress (seen under
                // load); the FIN below still ends our side, only without close_notify.
            }
        }

        Socket.Shutdown(SocketShutdown.Send);
    }

    public void Dispose()
    {
        Tls?.Dispose();
        Socket.Dispose();
    }
}

using System.Net.Security;
using System.Net.Sockets;

namespace EchoKit.Client;

/// <summary>
/// A connected client's byte channel: the socket itself, or TLS over it. Sends and receives keep
/// <see cref="TimedTransfer"/>'s rules either way; the end of our side is a FIN, after TLS's close_notify.
/// </summary>
internal sealed class ClientChannel(Socket socket, SslStream? tls = null) : IDisposable
{
    private long _sent;
    private long _received;

    public Socket Socket { get; } = socket;

    public SslStream? Tls { get; } = tls;

    /// <summary>--hex-dump: every byte each way (what TLS carries, in the clear), as connection 1.</summary>
    public Internal.HexDump? Dump { get; init; }

    /// <summary>Bytes already sent on the socket before this channel (a PROXY header), for the dump's offsets.</summary>
    public long SentBefore
    {
        init => _sent = value;
    }

    public ValueTask SendAsync(ReadOnlyMemory<byte> data, TimeSpan? timeout) => Dump is null ? SendCoreAsync(data, timeout) : SendDumpedAsync(data, timeout);

    public ValueTask<int> ReceiveAsync(Memory<byte> buffer, TimeSpan? timeout, bool throwOnTimeout) =>
        Dump is null ? ReceiveCoreAsync(buffer, timeout, throwOnTimeout) : ReceiveDumpedAsync(buffer, timeout, throwOnTimeout);

    private ValueTask SendCoreAsync(ReadOnlyMemory<byte> data, TimeSpan? timeout) => Tls is null
        ? TimedTransfer.SendAsync(Socket, data, timeout)
        : TimedTransfer.SendAsync(Socket, Tls, data, timeout);

    private ValueTask<int> ReceiveCoreAsync(Memory<byte> buffer, TimeSpan? timeout, bool throwOnTimeout) => Tls is null
        ? TimedTransfer.ReceiveAsync(Socket, buffer, timeout, throwOnTimeout)
        : TimedTransfer.ReceiveAsync(Tls, buffer, timeout, throwOnTimeout);

    private async ValueTask SendDumpedAsync(ReadOnlyMemory<byte> data, TimeSpan? timeout)
    {
        await SendCoreAsync(data, timeout).ConfigureAwait(false);
        Dump!.Record(1, Socket.RemoteEndPoint, inbound: false, _sent, data.Span);
        _sent += data.Length;
    }

    private async ValueTask<int> ReceiveDumpedAsync(Memory<byte> buffer, TimeSpan? timeout, bool throwOnTimeout)
    {
        int received = await ReceiveCoreAsync(buffer, timeout, throwOnTimeout).ConfigureAwait(false);
        if (received > 0)
        {
            Dump!.Record(1, Socket.RemoteEndPoint, inbound: true, _received, buffer.Span[..received]);
            _received += received;
        }

        return received;
    }

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

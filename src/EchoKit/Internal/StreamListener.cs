using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal;

/// <summary>
/// A bound, listening stream socket and its accept loop. The loop ends only when the listener
/// is closed: errors of one pending connection are skipped, and resource exhaustion
/// (EMFILE, ENFILE, ENOBUFS, ENOMEM) backs off from 5 ms doubling to 1 s instead of spinning,
/// logging at most once a second.
/// </summary>
internal sealed class StreamListener : IDisposable
{
    private readonly Socket _socket;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stopAccepting = new();
    private volatile bool _closed;

    private StreamListener(Socket socket, ILogger logger)
    {
        _socket = socket;
        _logger = logger;
        LocalEndPoint = socket.LocalEndPoint!;
    }

    /// <summary>An <see cref="IPEndPoint"/>, or a <see cref="UnixDomainSocketEndPoint"/> for <see cref="OpenUnix"/>.</summary>
    public EndPoint LocalEndPoint { get; }

    /// <summary>The socket file this listener created and removes when it closes; null for TCP.</summary>
    public string? UnixPath { get; private set; }

    private UnixSocketFile.Identity? _boundFile;

    public bool IsDualStack { get; private set; }

    /// <summary>Binds and listens; throws <see cref="ListenFailedException"/> with the one-line reason.</summary>
    public static StreamListener Open(IPAddress address, int port, int backlog, bool dualStack, ILogger logger, bool reusePort = false)
    {
        var endPoint = new IPEndPoint(address, port);
        var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        var listener = BindAndListen(socket, endPoint, backlog, beforeBind: () =>
        {
            if (address.AddressFamily == AddressFamily.InterNetworkV6)
            {
                // [::] takes IPv4 too unless IPv6 only was asked for (IPV6_V6ONLY).
                dualStack &= address.Equals(IPAddress.IPv6Any);
                socket.DualMode = dualStack;
            }
            else
            {
                dualStack = false;
            }

            // SO_REUSEADDR alone, set directly: .NET's ReuseAddress option also sets SO_REUSEPORT on
            // Linux, which would let a second server bind the same port silently (dotnet/corefx#24562).
            socket.SetRawSocketOption(SocketOptionLevels.SolSocket, SocketOptionLevels.SoReuseAddr, BitConverter.GetBytes(1));
            if (reusePort)
            {
                // --reuse-port: several processes of this user share the port, the kernel balancing new connections
                // (the zero-downtime restart: the new process binds beside the old one before it stops).
                socket.SetRawSocketOption(SocketOptionLevels.SolSocket, 15 /* SO_REUSEPORT */, BitConverter.GetBytes(1));
            }
        }, bind: null, logger);
        listener.IsDualStack = dualStack;
        return listener;
    }

    /// <summary>
    /// A listening socket someone else made and bound (systemd's socket activation): served as it is, and a Unix
    /// socket's file is left where it is at the stop.
    /// </summary>
    public static StreamListener Adopt(Socket socket, ILogger logger) => new(socket, logger)
    {
        IsDualStack = socket.AddressFamily == AddressFamily.InterNetworkV6 && socket.DualMode
            && socket.LocalEndPoint is IPEndPoint { Address: var any } && any.Equals(IPAddress.IPv6Any),
    };

    /// <summary>
    /// Listens on a Unix domain stream socket. A file left by a crashed server (nobody accepts on it)
    /// is replaced; a live one is refused with EADDRINUSE; anything that is not a socket is left alone.
    /// </summary>
    public static StreamListener OpenUnix(string path, int backlog, UnixFileMode? mode, ILogger logger)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        UnixSocketFile.Identity? bound = null;
        var listener = BindAndListen(socket, new UnixDomainSocketEndPoint(path), backlog, beforeBind: null,
            bind: () => bound = UnixSocketFile.Bind(socket, path, mode), logger);
        listener.UnixPath = path;
        listener._boundFile = bound;
        return listener;
    }

    /// <summary>Bind and listen, each failure as the one-line <see cref="ListenFailedException"/>; the socket is closed on failure.</summary>
    private static StreamListener BindAndListen(Socket socket, EndPoint endPoint, int backlog, Action? beforeBind, Action? bind, ILogger logger)
    {
        try
        {
            beforeBind?.Invoke();
            if (bind is not null)
            {
                bind();
            }
            else
            {
                Bind(socket, endPoint);
            }

            try
            {
                socket.Listen(backlog);
            }
            catch (SocketException e)
            {
                throw new ListenFailedException("listen", endPoint, e.SocketErrorCode, e);
            }
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return new StreamListener(socket, logger);
    }

    private static void Bind(Socket socket, EndPoint endPoint)
    {
        try
        {
            socket.Bind(endPoint);
        }
        catch (SocketException e)
        {
            throw new ListenFailedException("bind", endPoint, e.SocketErrorCode, e);
        }
    }

    /// <summary>
    /// The listening descriptor, made non-blocking, for the epoll engine to accept from (it must then
    /// not be used with <see cref="AcceptLoopAsync"/>). Valid until <see cref="Dispose"/>.
    /// </summary>
    public (int Fd, bool Tcp, IReadOnlyList<Stages.IStreamStage> StreamStages) DescriptorForEpoll()
    {
        _socket.Blocking = false;
        return ((int)_socket.Handle, _socket.ProtocolType == ProtocolType.Tcp, StreamStages);
    }

    /// <summary>
    /// The stages that wrap the byte stream of this listener's connections (TLS on a TLS port, and those of the
    /// whole server); none: plain bytes.
    /// </summary>
    public IReadOnlyList<Stages.IStreamStage> StreamStages { get; set; } = [];

    /// <summary>
    /// The stop begins: a TCP listener lets the handshakes under way complete but starts no new one
    /// (<see cref="SocketFilter.HoldNewHandshakes"/>), so that what its backlog holds once it is drained is all it
    /// will ever hold. Not wanted where closing hands the backlog over (SO_REUSEPORT with tcp_migrate_req).
    /// </summary>
    public void HoldNewHandshakes()
    {
        if (_socket.ProtocolType == ProtocolType.Tcp && !_closed)
        {
            _ = SocketFilter.HoldNewHandshakes((int)_socket.Handle); // best effort: without it, the window is only shorter
        }
    }

    /// <summary>
    /// Ends <see cref="AcceptLoopAsync"/> after it has accepted what the backlog holds (connections the kernel
    /// has completed are served, not reset by the close); the listener stays open until <see cref="Dispose"/>.
    /// </summary>
    public void StopAccepting() => _stopAccepting.Cancel();

    /// <summary>
    /// Accepts until <see cref="StopAccepting"/> (then drains the backlog) or <see cref="Dispose"/>; hands each
    /// socket to <paramref name="onAccepted"/>.
    /// </summary>
    public async Task AcceptLoopAsync(Action<Socket> onAccepted, Action onDescriptorsExhausted, Action<SocketError>? onBackoff = null)
    {
        var backoff = new AcceptBackoff(_logger, onBackoff);
        while (!_closed)
        {
            Socket accepted;
            try
            {
                accepted = await _socket.AcceptAsync(_stopAccepting.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                AcceptBacklog(onAccepted);
                return;
            }
            catch (Exception) when (_closed)
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e) when (AcceptBackoff.IsPendingConnectionError(e.SocketErrorCode))
            {
                // That one connection died in the backlog; the listener is fine.
                continue;
            }
            catch (SocketException e)
            {
                if (e.SocketErrorCode == SocketError.TooManyOpenSockets)
                {
                    onDescriptorsExhausted();
                }

                await Task.Delay(backoff.Failed(e.SocketErrorCode)).ConfigureAwait(false);
                continue;
            }

            backoff.Succeeded();
            Hand(accepted, onAccepted);
        }
    }

    /// <summary>Hands an accepted socket over; one connection's failed setup is logged, not the listener's problem.</summary>
    private void Hand(Socket accepted, Action<Socket> onAccepted)
    {
        try
        {
            onAccepted(accepted);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or InvalidOperationException)
        {
            // e.g. it was reset before we looked at it
            Log.SetupFailed(_logger, e.Message);
            accepted.Dispose();
        }
    }

    /// <summary>What the backlog holds now, accepted without waiting.</summary>
    private void AcceptBacklog(Action<Socket> onAccepted)
    {
        if (_closed)
        {
            return;
        }

        _socket.Blocking = false;
        while (true)
        {
            Socket accepted;
            try
            {
                accepted = _socket.Accept();
            }
            catch (SocketException e) when (e.SocketErrorCode != SocketError.WouldBlock && AcceptBackoff.IsPendingConnectionError(e.SocketErrorCode))
            {
                continue; // that one connection died in the backlog
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return; // EAGAIN: empty (or out of descriptors: what is left is reset at the close)
            }

            Hand(accepted, socket =>
            {
                socket.Blocking = true;
                onAccepted(socket);
            });
        }
    }

    /// <summary>Stops accepting: closes the listening socket (new connections are refused from here on).</summary>
    public void Dispose()
    {
        _closed = true;
        _stopAccepting.Cancel();
        _socket.Dispose();
        _stopAccepting.Dispose();
        if (UnixPath is not null)
        {
            UnixSocketFile.Remove(UnixPath, _boundFile);
        }
    }
}

using System.Net;
using System.Net.Sockets;

namespace EchoKit.Internal.Epoll;

// The listeners: accepting, the EMFILE back-off, and admitting a new connection.
internal sealed unsafe partial class EpollLoop
{
    private void ListenerAdd()
    {
        if (_listening || _stopAccepting)
        {
            return;
        }

        for (int i = 0; i < _listeners.Length; i++)
        {
            // EPOLLEXCLUSIVE: one loop wakes per new connection, not every loop.
            Control(Native.EPOLL_CTL_ADD, _listeners[i].Fd, Native.EPOLLIN | Native.EPOLLEXCLUSIVE, ListenerFlag | (uint)i);
        }

        _listening = true;
    }

    private void ListenerRemove()
    {
        if (!_listening)
        {
            return;
        }

        foreach (var listener in _listeners)
        {
            Control(Native.EPOLL_CTL_DEL, listener.Fd, 0, 0);
        }

        _listening = false;
    }

    /// <summary>
    /// Accepts on the listeners that were ready in this batch, after its other events: connections whose
    /// peers have gone are closed first, so a client arriving behind a storm is counted against the
    /// connections that are really left, and not told "server busy" by ones already closed.
    /// </summary>
    private void AcceptReady()
    {
        _anyListenerReady = false;
        for (int i = 0; i < _listeners.Length; i++)
        {
            if (_listenerReady[i])
            {
                _listenerReady[i] = false;
                AcceptBatchFrom(_listeners[i].Fd, _listeners[i].Tcp, _listeners[i].StreamStages);
            }
        }
    }

    private void AcceptBatchFrom(int listenFd, bool tcp, IReadOnlyList<Stages.IStreamStage> streamStages) =>
        AcceptFrom(listenFd, tcp, streamStages, untilEmpty: false);

    /// <summary>At the stop: accepts until the backlog is empty (or accept fails), whether or not the loop is listening.</summary>
    private void AcceptBacklog(int listenFd, bool tcp, IReadOnlyList<Stages.IStreamStage> streamStages) =>
        AcceptFrom(listenFd, tcp, streamStages, untilEmpty: true);

    /// <summary>
    /// Accepts and admits: a batch while the loop listens, or (<paramref name="untilEmpty"/>, at the stop) all the
    /// backlog holds. A failure of the listener itself backs off in the first case and just ends the second (what
    /// is left is reset at the close).
    /// </summary>
    private void AcceptFrom(int listenFd, bool tcp, IReadOnlyList<Stages.IStreamStage> streamStages, bool untilEmpty)
    {
        byte* address = stackalloc byte[128];
        for (int i = 0; untilEmpty || (i < AcceptBatch && _listening); i++)
        {
            uint length = 128;
            int fd = Native.Accept4(listenFd, address, &length, Native.SOCK_NONBLOCK | Native.SOCK_CLOEXEC);
            if (fd < 0)
            {
                int errno = Native.LastError;
                if (errno == Native.EAGAIN)
                {
                    return;
                }

                if (errno == Native.EPROTO || AcceptBackoff.IsPendingConnectionError(Native.ToSocketError(errno)))
                {
                    continue; // that one connection died in the backlog (ECONNABORTED, EPROTO, ...): the listener is fine
                }

                if (!untilEmpty)
                {
                    BackOffAccepting(errno);
                }

                return;
            }

            _backoff.Succeeded();
            Admit(fd, tcp, streamStages, PeerOf(address, length));
        }
    }

    private void BackOffAccepting(int errno)
    {
        if (errno is Native.EMFILE or Native.ENFILE)
        {
            _server.OnDescriptorsExhausted();
        }

        var delay = _backoff.Failed(Native.ToSocketError(errno));
        ListenerRemove();
        _acceptResumeMs = MonotonicClock.Milliseconds + (long)delay.TotalMilliseconds;
        _nextTickMs = Math.Min(_nextTickMs, _acceptResumeMs);
    }

    private void Admit(int fd, bool tcp, IReadOnlyList<Stages.IStreamStage> streamStages, EndPoint? peer)
    {
        var verdict = _server.Admit(fd, ref peer, out long id);
        if (verdict.Refused)
        {
            if (verdict.Reply is { } reply)
            {
                fixed (byte* line = reply)
                {
                    Native.Send(fd, line, (nuint)reply.Length, Native.MSG_NOSIGNAL);
                }

                Native.Shutdown(fd, Native.SHUT_WR);
            }

            _server.ReportRefused(id, peer, verdict); // counted before the peer sees the close, so a scrape after it sees the refusal
            Native.Close(fd);
            return;
        }

        if (tcp)
        {
            if (_server.Options.NoDelay)
            {
                Native.SetNoDelay(fd);
            }

            Native.SetUrgentInline(fd);
        }

        if (streamStages.Count > 0)
        {
            // A stage wraps this connection's byte stream: a stream loop serves it, not this loop.
            _server.ReportAccepted(id, peer);
            _engine.HandOver(fd, id, peer, streamStages);
            return;
        }

        if (_engine.LighterThan(this) is { } lighter)
        {
            if (lighter.Post(() => lighter.Serve(fd, id, peer, handedOver: true)))
            {
                return;
            }

            Interlocked.Decrement(ref lighter._incoming); // that loop has ended: served here
        }

        Serve(fd, id, peer, handedOver: false);
    }

    /// <summary>
    /// The kernel wakes the loop that registered first on a listener for every new connection, whether or not
    /// another loop is waiting (an epoll set takes an EPOLLEXCLUSIVE wake-up whether or not its thread waits):
    /// a burst of connections would all land on one loop (measured: 100 of 100). So the loop that accepts hands a
    /// connection to a loop with fewer, counting those on their way to it; a balanced server hands nothing over.
    /// </summary>
    public int Load => Volatile.Read(ref _count) + Volatile.Read(ref _incoming);

    private int _incoming;

    /// <summary>A connection has been handed to this loop; <see cref="Serve"/> takes it off the way.</summary>
    public void OnTheWay() => Interlocked.Increment(ref _incoming);

    /// <summary>Takes an admitted connection: registers it, greets it (or reads its prefix first).</summary>
    private void Serve(int fd, long id, EndPoint? peer, bool handedOver)
    {
        if (handedOver)
        {
            Interlocked.Decrement(ref _incoming);
        }

        if (fd >= _byFd.Length)
        {
            Array.Resize(ref _byFd, Math.Max(fd + 1, _byFd.Length * 2));
        }

        var c = new EpollConnection(fd, ++_nextSerial, id, peer, _nowMs);
        _byFd[fd] = c;
        _count++;
        _server.ReportAccepted(id, peer);
        if (_server.Options.PrefixStages.Count > 0
            && Stages.PrefixReader.For(_server.Options.PrefixStages, new Stages.ConnectionContext(id, fd, peer), _nowMs, _server.AdmitAfterPrefix) is { } prefix)
        {
            // The prefix stages read first; the greeting waits for them (ReadPrefix). The tick enforces their deadline.
            c.Prefix = prefix;
            _nextTickMs = Math.Min(_nextTickMs, c.Prefix.DeadlineMs);
            UpdateEvents(c);
            return;
        }

        if (_server.Options.SendGreeting)
        {
            fixed (byte* greeting = Greeting.Bytes.Span)
            {
                if (!WriteOrKeep(c, greeting, Greeting.Bytes.Length))
                {
                    return;
                }
            }
        }

        UpdateEvents(c);
    }

    /// <summary>What .NET's RemoteEndPoint gives for an unbound Unix client: an address of just sa_family.</summary>
    private static readonly EndPoint UnnamedUnixPeer = new UnixDomainSocketEndPoint("/").Create(new SocketAddress(AddressFamily.Unix, 2));

    private static EndPoint? PeerOf(byte* address, uint length)
    {
        if (length < 2)
        {
            return null;
        }

        var family = *(ushort*)address switch
        {
            2 => AddressFamily.InterNetwork,    // AF_INET
            10 => AddressFamily.InterNetworkV6, // AF_INET6
            1 => AddressFamily.Unix,
            _ => AddressFamily.Unknown,
        };
        if (family == AddressFamily.Unix)
        {
            return UnnamedUnixPeer; // a client's Unix socket is almost never bound to a name
        }

        if (family == AddressFamily.Unknown)
        {
            return null;
        }

        var socketAddress = new SocketAddress(family, (int)length);
        new ReadOnlySpan<byte>(address, (int)length).CopyTo(socketAddress.Buffer.Span);
        var template = family == AddressFamily.InterNetwork ? new IPEndPoint(IPAddress.Any, 0) : new IPEndPoint(IPAddress.IPv6Any, 0);
        return EndPointText.Normalize(template.Create(socketAddress));
    }
}

using System.Net;
using System.Net.Sockets;
using EchoKit.Internal.Epoll;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal.Datagrams;

/// <summary>
/// UDP echo (RFC 862), and the same over a Unix datagram socket: every datagram goes back to its sender
/// unchanged, if <see cref="DatagramPolicy"/> lets it. On the epoll engine's platform (Linux x86-64, unless
/// the socket engine is asked for) each socket is served by a <see cref="BatchedDatagramLoop"/>: recvmmsg and
/// sendmmsg on a thread of its own; with more than one loop (--loops, one per CPU by default) the UDP port is
/// one socket per loop in a SO_REUSEPORT group whose datagrams a small BPF program steers by the CPU that
/// received them (see <see cref="SocketFilter.SteerByCpu"/>). Elsewhere one asynchronous Socket loop serves
/// it (below). Receive and send buffers are raised for bursts (--udp-rcvbuf, --udp-sndbuf).
/// </summary>
internal sealed class DatagramEchoService : IDisposable
{
    private const int MaxUdpDatagram = 65_536; // larger than any UDP payload (65,507 over IPv4, 65,527 over IPv6)
    private const int DefaultBufferBytes = 4 << 20; // as udp_mmsg: a burst from many flows fits

    private readonly Socket[] _sockets;
    private readonly DatagramPolicy _policy;
    private readonly IPayloadSink? _sink;
    private readonly ILogger _logger;
    private readonly BatchedDatagramLoop[] _batched = [];
    private readonly Task? _asyncLoop;
    private readonly TimeSpan _stopWait;
    private volatile bool _closed;
    private long _asyncEchoed;
    private UnixSocketFile.Identity? _boundFile;

    private DatagramEchoService(Socket[] sockets, bool batched, EchoServerOptions options, ILogger logger, IPayloadSink? sink, Access.AccessStage? access, string? unixPath = null)
    {
        _sockets = sockets;
        _logger = logger;
        _sink = sink;
        UnixPath = unixPath;
        bool isUnix = sockets[0].AddressFamily == AddressFamily.Unix;
        LocalEndPoint = sockets[0].LocalEndPoint!;
        _policy = new DatagramPolicy(options, logger, LocalEndPoint, isUnix,
            options.MaxDatagramSize ?? (isUnix ? LargestUnixDatagram() : MaxUdpDatagram), access);
        _stopWait = TimeSpan.FromMilliseconds(Math.Clamp(options.ShutdownTimeout.TotalMilliseconds, 100, 5000));
        SizeBuffers(options, isUnix);

        if (batched)
        {
            _batched = sockets.Select((socket, i) => new BatchedDatagramLoop(i, socket, _policy, sink, logger)).ToArray();
            foreach (var loop in _batched)
            {
                loop.Start();
            }
        }
        else
        {
            sockets[0].Blocking = false; // synchronous calls return EAGAIN instead of waiting; async ones are unaffected
            _asyncLoop = Task.Run(ReceiveLoopAsync);
        }
    }

    /// <summary>An <see cref="IPEndPoint"/>, or a <see cref="UnixDomainSocketEndPoint"/> for <see cref="OpenUnix"/>.</summary>
    public EndPoint LocalEndPoint { get; }

    /// <summary>The socket file this service created and removes when it closes; null for UDP.</summary>
    public string? UnixPath { get; }

    /// <summary>"udp" or "unix datagram", for log lines.</summary>
    public string Transport => _policy.Transport;

    /// <summary>Sockets (and loops) serving the port: more than one in a SO_REUSEPORT group.</summary>
    public int Loops => _sockets.Length;

    public long Echoed => Interlocked.Read(ref _asyncEchoed) + _batched.Sum(l => l.Echoed);

    /// <summary>Datagrams the kernel dropped with a receive queue full.</summary>
    public long KernelDrops => _policy.KernelDrops;

    /// <summary>The sockets a UDP service opens for one address: one per loop on the batched engine.</summary>
    public static int SocketsPerAddress(EchoServerOptions options) =>
        EngineChoice.UsesEpoll(options.Engine) ? EpollStreamEngine.LoopCount(options) : 1;

    public static DatagramEchoService Open(IPAddress address, int port, bool dualStack, EchoServerOptions options, ILogger logger, IPayloadSink? sink, Access.AccessStage? access)
    {
        bool batched = EngineChoice.UsesEpoll(options.Engine);
        int loops = SocketsPerAddress(options);
        var sockets = new List<Socket>();
        var endPoint = new IPEndPoint(address, port);
        try
        {
            // No SO_REUSEADDR: on a UDP socket it would let any other socket that sets it, of any user, bind the
            // same port and take a share of the datagrams. SO_REUSEPORT only where there are loops to share
            // it: the kernel admits only sockets of our own user to the group, and the steering program never
            // picks one beyond ours.
            var first = NewUdpSocket(address, dualStack);
            sockets.Add(first);
            if (loops > 1 && !JoinSteeredGroup(first, loops))
            {
                first.Dispose();
                sockets[0] = first = NewUdpSocket(address, dualStack);
                loops = 1;
            }

            first.Bind(endPoint);
            endPoint = (IPEndPoint)first.LocalEndPoint!;
            for (int i = 1; i < loops; i++)
            {
                var socket = NewUdpSocket(address, dualStack);
                sockets.Add(socket);
                if (DatagramNative.SetReusePort((int)socket.Handle) is int errno and not 0)
                {
                    throw new SocketException((int)Native.ToSocketError(errno));
                }

                socket.Bind(endPoint);
            }
        }
        catch (SocketException e)
        {
            foreach (var socket in sockets)
            {
                socket.Dispose();
            }

            throw new ListenFailedException("bind (udp)", endPoint, e.SocketErrorCode, e);
        }

        return new DatagramEchoService(sockets.ToArray(), batched, options, logger, sink, access);
    }

    private static Socket NewUdpSocket(IPAddress address, bool dualStack)
    {
        var socket = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        if (address.AddressFamily == AddressFamily.InterNetworkV6)
        {
            socket.DualMode = dualStack && address.Equals(IPAddress.IPv6Any);
        }

        return socket;
    }

    /// <summary>SO_REUSEPORT and the CPU-steering program on the group's first socket, before it binds.</summary>
    private static bool JoinSteeredGroup(Socket first, int loops)
    {
        int fd = (int)first.Handle;
        return DatagramNative.SetReusePort(fd) == 0 && SocketFilter.SteerByCpu(fd, loops) == 0;
    }

    /// <summary>
    /// Serves a bound datagram socket someone else made (systemd's socket activation): one loop, its options as
    /// they were given (no SO_REUSEPORT group), and a Unix socket's file is left where it is at the stop.
    /// </summary>
    /// <summary>What this service answers and drops, and its counts.</summary>
    internal DatagramPolicy Policy => _policy;

    public static DatagramEchoService Adopt(Socket socket, EchoServerOptions options, ILogger logger, IPayloadSink? sink, Access.AccessStage? access) =>
        new([socket], EngineChoice.UsesEpoll(options.Engine), options, logger, sink, access);

    /// <summary>Serves a Unix datagram socket at <paramref name="path"/> (a stale file is replaced, a live one refused).</summary>
    public static DatagramEchoService OpenUnix(string path, EchoServerOptions options, ILogger logger, IPayloadSink? sink, Access.AccessStage? access)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        try
        {
            var bound = UnixSocketFile.Bind(socket, path, options.UnixMode);
            return new DatagramEchoService([socket], EngineChoice.UsesEpoll(options.Engine), options, logger, sink, access, path) { _boundFile = bound };
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Receive and send buffers for bursts: 4 MiB unless --udp-rcvbuf/--udp-sndbuf say otherwise, past
    /// net.core.rmem_max/wmem_max where the process may (CAP_NET_ADMIN). A size asked for explicitly that the
    /// kernel capped is said once. A Unix socket's send buffer must hold the largest reply.
    /// </summary>
    private void SizeBuffers(EchoServerOptions options, bool isUnix)
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        int receive = options.UdpReceiveBufferBytes ?? DefaultBufferBytes;
        int send = Math.Max(options.UdpSendBufferBytes ?? DefaultBufferBytes, isUnix ? _policy.BufferSize + 4096 : 0);
        for (int i = 0; i < _sockets.Length; i++)
        {
            int fd = (int)_sockets[i].Handle;
            DatagramNative.SetDropCounting(fd);
            int receiveGiven = DatagramNative.SetBuffer(fd, receive: true, receive);
            int sendGiven = DatagramNative.SetBuffer(fd, receive: false, send);
            if (i == 0)
            {
                // The kernel reports twice what it grants (the rest is its bookkeeping): half is what was given.
                if (options.UdpReceiveBufferBytes is not null && receiveGiven / 2 < receive)
                {
                    Log.DatagramBufferCapped(_logger, Transport, "receive", receive, receiveGiven / 2, "rmem_max");
                }

                if (options.UdpSendBufferBytes is not null && sendGiven / 2 < send)
                {
                    Log.DatagramBufferCapped(_logger, Transport, "send", send, sendGiven / 2, "wmem_max");
                }
            }
        }
    }

    /// <summary>The receive buffer the kernel gave (as it reports it), for tests and the log.</summary>
    public int ReceiveBufferBytes => OperatingSystem.IsLinux() ? DatagramNative.Buffer((int)_sockets[0].Handle, receive: true) : _sockets[0].ReceiveBufferSize;

    /// <summary>
    /// A Unix datagram can be as large as the sender's SO_SNDBUF, which setsockopt caps at twice
    /// net.core.wmem_max; a buffer that size takes any datagram an unprivileged sender can send.
    /// </summary>
    private static int LargestUnixDatagram()
    {
        try
        {
            if (int.TryParse(File.ReadAllText("/proc/sys/net/core/wmem_max").Trim(), out int wmemMax) && wmemMax > 0)
            {
                return (int)Math.Clamp(2L * wmemMax, MaxUdpDatagram, 16 * 1024 * 1024);
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }

        return 2 * 212_992; // Linux's default wmem_max
    }

    /// <summary>MSG_TRUNC: receives return the datagram's real length even when the buffer was too small.</summary>
    private const SocketFlags TruncatedLength = SocketFlags.Truncated;

    /// <summary>
    /// The portable loop: one asynchronous receive wakes it; then it drains, without blocking, every datagram
    /// already queued. Several receives in flight on one socket were measured slower (11k vs 23k round
    /// trips/s for one flow): the runtime then stops completing inline.
    /// </summary>
    private async Task ReceiveLoopAsync()
    {
        var socket = _sockets[0];
        var buffer = GC.AllocateUninitializedArray<byte>(_policy.BufferSize, pinned: true);
        var from = new SocketAddress(socket.AddressFamily);
        int addressCapacity = from.Size; // each receive sets Size to the sender's address length (0 for an unbound Unix sender)
        while (!_closed)
        {
            int received;
            try
            {
                from.Size = addressCapacity;
                received = await socket.ReceiveFromAsync(buffer, TruncatedLength, from).ConfigureAwait(false);
            }
            catch (SocketException e) when (!_closed && e.SocketErrorCode is SocketError.ConnectionReset or SocketError.ConnectionRefused
                or SocketError.HostUnreachable or SocketError.NetworkUnreachable or SocketError.MessageSize)
            {
                continue; // an ICMP error about an earlier send: not a reason to stop receiving
            }
            catch (Exception e) when (_closed && e is SocketException or ObjectDisposedException)
            {
                return;
            }

            await EchoAsync(socket, buffer, received, from).ConfigureAwait(false);

            // Drain what else is queued without another trip through the event loop.
            try
            {
                while (!_closed && socket.Available > 0)
                {
                    from.Size = addressCapacity;
                    received = socket.ReceiveFrom(buffer, TruncatedLength, from);
                    await EchoAsync(socket, buffer, received, from).ConfigureAwait(false);
                }
            }
            catch (SocketException)
            {
                // An ICMP error surfaced, or the queue emptied under us: back to the asynchronous wait.
            }
            catch (ObjectDisposedException) when (_closed)
            {
                return;
            }
        }
    }

    private async ValueTask EchoAsync(Socket socket, byte[] buffer, int received, SocketAddress from)
    {
        if (!_policy.ShouldAnswer(from.Buffer.Span[..from.Size], received, truncated: received > buffer.Length))
        {
            return;
        }

        if (_sink is not null)
        {
            await _sink.WriteAsync(0, buffer.AsMemory(0, received)).ConfigureAwait(false); // before the reply, as the batched loops do
        }

        _policy.Dump?.RecordDatagram(from.Buffer.Span[..from.Size], inbound: true, buffer.AsSpan(0, received));

        // Non-blocking: a full send buffer drops the reply, which UDP allows, rather than stalling the loop.
        try
        {
            socket.SendTo(buffer.AsSpan(0, received), SocketFlags.None, from);
            Interlocked.Increment(ref _asyncEchoed);
            _policy.Dump?.RecordDatagram(from.Buffer.Span[..from.Size], inbound: false, buffer.AsSpan(0, received));
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.MessageSize)
        {
            _policy.ReplyTooLarge(); // larger than our send buffer can ever hold
            return;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.WouldBlock or SocketError.NoBufferSpaceAvailable)
        {
            _policy.RepliesNotSent(1);
            return;
        }
        catch (SocketException)
        {
            return; // the sender is unreachable: UDP makes no promises
        }
    }

    public void Dispose()
    {
        _closed = true;
        foreach (var loop in _batched)
        {
            loop.Stop(_stopWait);
        }

        if (OperatingSystem.IsLinux())
        {
            _policy.KernelDroppedInAll(_sockets.Sum(s => Math.Max(0, DatagramNative.KernelDrops((int)s.Handle))));
        }

        foreach (var socket in _sockets)
        {
            socket.Dispose();
        }

        _asyncLoop?.Wait(_stopWait);
        if (UnixPath is not null)
        {
            UnixSocketFile.Remove(UnixPath, _boundFile);
        }

        Log.DatagramSummary(_logger, Transport, Echoed, _policy.DropCounts());
    }
}

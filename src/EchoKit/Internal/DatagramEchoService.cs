using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal;

/// <summary>
/// UDP echo (RFC 862), and the same over a Unix datagram socket: every datagram goes back to its sender unchanged. One asynchronous receive wakes
/// the loop; then it drains, without blocking, every datagram already queued (many datagrams per
/// wake-up). Several receives in flight on one socket were measured slower: 11k vs 23k round trips/s
/// for one flow (bench/udp-compare.sh), the runtime then stops completing inline. Guards against reflection abuse
/// ("Loop DoS", CVE-2024-2169): datagrams from source ports below 1024 (other services' well-known ports)
/// are dropped, and each source address gets a token bucket of <see cref="EchoServerOptions.UdpRate"/>
/// datagrams per second. Every receive asks for the datagram's real length (MSG_TRUNC), so a datagram larger
/// than the buffer is never echoed cut short: it is dropped and counted. Unix datagrams from an unbound
/// sender have no address to answer to and are dropped and counted too. Drops are logged at most once a second.
/// </summary>
internal sealed class DatagramEchoService : IDisposable
{
    private const int MaxUdpDatagram = 65_536; // larger than any UDP payload (65,507 over IPv4, 65,527 over IPv6)
    private const int Loops = 1;

    private readonly Socket _socket;
    private readonly EchoServerOptions _options;
    private readonly ILogger _logger;
    private readonly IPayloadSink? _sink;
    private readonly SourceRateTable? _rates;
    private readonly OwnAddress _own;
    private readonly Task[] _loops;
    private readonly bool _isUnix;
    private readonly int _bufferSize;
    private long _echoed;
    private long _droppedLowPort;
    private long _droppedRate;
    private long _droppedOversize;
    private long _droppedUnnamed;
    private long _droppedSelf;
    private long _droppedTooLarge;
    private long _lastWarningMs = long.MinValue / 2;
    private volatile bool _closed;
    private UnixSocketFile.Identity? _boundFile;

    private DatagramEchoService(Socket socket, EchoServerOptions options, ILogger logger, IPayloadSink? sink, string? unixPath = null)
    {
        _socket = socket;
        _options = options;
        _logger = logger;
        _sink = sink;
        UnixPath = unixPath;
        _isUnix = unixPath is not null;
        _bufferSize = options.MaxDatagramSize ?? (_isUnix ? LargestUnixDatagram() : MaxUdpDatagram);
        LocalEndPoint = socket.LocalEndPoint!;
        _rates = !_isUnix && options.UdpRate > 0 ? new SourceRateTable(options.UdpRate) : null;
        _own = new OwnAddress(LocalEndPoint);
        if (_isUnix)
        {
            // A reply is as large as the datagram it answers: let the send buffer take the largest we accept
            // (the kernel caps it at net.core.wmem_max; a reply over that is counted and logged, not lost silently).
            try
            {
                socket.SendBufferSize = Math.Max(socket.SendBufferSize, _bufferSize + 4096);
            }
            catch (SocketException)
            {
            }
        }

        socket.Blocking = false; // synchronous calls return EAGAIN instead of waiting; async ones are unaffected
        _loops = Enumerable.Range(0, Loops).Select(_ => Task.Run(ReceiveLoopAsync)).ToArray();
    }

    /// <summary>An <see cref="IPEndPoint"/>, or a <see cref="UnixDomainSocketEndPoint"/> for <see cref="OpenUnix"/>.</summary>
    public EndPoint LocalEndPoint { get; }

    /// <summary>The socket file this service created and removes when it closes; null for UDP.</summary>
    public string? UnixPath { get; }

    /// <summary>"udp" or "unix datagram", for log lines.</summary>
    public string Transport => _isUnix ? "unix datagram" : "udp";

    public long Echoed => Interlocked.Read(ref _echoed);

    public static DatagramEchoService Open(IPAddress address, int port, bool dualStack, EchoServerOptions options, ILogger logger, IPayloadSink? sink)
    {
        var endPoint = new IPEndPoint(address, port);
        var socket = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            if (address.AddressFamily == AddressFamily.InterNetworkV6)
            {
                socket.DualMode = dualStack && address.Equals(IPAddress.IPv6Any);
            }

            // No SO_REUSEADDR (nor SO_REUSEPORT): on a UDP socket it would let any other socket that sets it, of
            // any user, bind the same port and take a share of the datagrams. There is no TIME_WAIT to skip.
            socket.Bind(endPoint);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new ListenFailedException("bind (udp)", endPoint, e.SocketErrorCode, e);
        }

        return new DatagramEchoService(socket, options, logger, sink);
    }

    /// <summary>Serves a Unix datagram socket at <paramref name="path"/> (a stale file is replaced, a live one refused).</summary>
    public static DatagramEchoService OpenUnix(string path, EchoServerOptions options, ILogger logger, IPayloadSink? sink)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        try
        {
            var bound = UnixSocketFile.Bind(socket, path, options.UnixMode);
            return new DatagramEchoService(socket, options, logger, sink, path) { _boundFile = bound };
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

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

    private async Task ReceiveLoopAsync()
    {
        var buffer = GC.AllocateUninitializedArray<byte>(_bufferSize, pinned: true);
        var from = new SocketAddress(_socket.AddressFamily);
        int addressCapacity = from.Size; // each receive sets Size to the sender's address length (0 for an unbound Unix sender)
        while (!_closed)
        {
            int received;
            try
            {
                from.Size = addressCapacity;
                received = await _socket.ReceiveFromAsync(buffer, TruncatedLength, from).ConfigureAwait(false);
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

            await EchoAsync(buffer, received, from).ConfigureAwait(false);

            // Drain what else is queued without another trip through the event loop.
            try
            {
                while (!_closed && _socket.Available > 0)
                {
                    from.Size = addressCapacity;
                    received = _socket.ReceiveFrom(buffer, TruncatedLength, from);
                    await EchoAsync(buffer, received, from).ConfigureAwait(false);
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

    private async ValueTask EchoAsync(byte[] buffer, int received, SocketAddress from)
    {
        if (received > buffer.Length)
        {
            Dropped(ref _droppedOversize); // cut short by the kernel: echoing it would corrupt it silently
            return;
        }

        if (_isUnix)
        {
            if (from.Size <= sizeof(ushort))
            {
                Dropped(ref _droppedUnnamed); // an unbound sender: only sa_family, no address to answer to
                return;
            }
        }
        else
        {
            // sockaddr_in and sockaddr_in6 both carry the port in network order at bytes 2 and 3.
            int port = (from[2] << 8) | from[3];
            if (port < 1024 && !_options.UdpAllowLowPorts)
            {
                Dropped(ref _droppedLowPort);
                return;
            }

            if (_rates is not null && !_rates.TryTake(from, MonotonicClock.Milliseconds))
            {
                Dropped(ref _droppedRate);
                return;
            }
        }

        if (_own.Is(from))
        {
            // Spoofed from our own address and port, or a Unix sender whose name is now a link to our socket:
            // answering would send it to ourselves, again and again.
            Dropped(ref _droppedSelf);
            return;
        }

        // Non-blocking: a full send buffer drops the reply, which UDP allows, rather than stalling the loop.
        try
        {
            _socket.SendTo(buffer.AsSpan(0, received), SocketFlags.None, from);
            Interlocked.Increment(ref _echoed);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.MessageSize)
        {
            Dropped(ref _droppedTooLarge); // larger than our send buffer can ever hold
            return;
        }
        catch (SocketException)
        {
            return; // send buffer full, or the sender is unreachable: UDP makes no promises
        }

        if (_sink is not null)
        {
            await _sink.WriteAsync(0, buffer.AsMemory(0, received)).ConfigureAwait(false);
        }
    }

    private void Dropped(ref long counter)
    {
        Interlocked.Increment(ref counter);
        long now = MonotonicClock.Milliseconds;
        long last = Interlocked.Read(ref _lastWarningMs);
        if (now - last >= 1000 && Interlocked.CompareExchange(ref _lastWarningMs, now, last) == last)
        {
            Log.DatagramsDropped(_logger, Transport, DropCounts());
        }
    }

    private string DropCounts()
    {
        var parts = new List<string>();
        if (!_isUnix)
        {
            parts.Add($"{Interlocked.Read(ref _droppedLowPort)} dropped from ports below 1024");
            parts.Add($"{Interlocked.Read(ref _droppedRate)} dropped over the rate");
        }
        else
        {
            parts.Add($"{Interlocked.Read(ref _droppedUnnamed)} dropped from unbound senders (no address to answer)");
        }

        parts.Add($"{Interlocked.Read(ref _droppedOversize)} dropped as larger than {_bufferSize} bytes");
        parts.Add($"{Interlocked.Read(ref _droppedSelf)} dropped as sent from the server's own address");
        if (_isUnix)
        {
            parts.Add($"{Interlocked.Read(ref _droppedTooLarge)} replies dropped as larger than the send buffer (EMSGSIZE; raise net.core.wmem_max)");
        }
        return string.Join(", ", parts);
    }

    public void Dispose()
    {
        _closed = true;
        _socket.Dispose();
        Task.WaitAll(_loops, TimeSpan.FromSeconds(5));
        if (UnixPath is not null)
        {
            UnixSocketFile.Remove(UnixPath, _boundFile);
        }

        Log.DatagramSummary(_logger, Transport, Echoed, DropCounts());
    }
}

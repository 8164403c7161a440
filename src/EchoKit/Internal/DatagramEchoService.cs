using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal;

/// <summary>
/// UDP echo (RFC 862): every datagram goes back to its sender unchanged. One asynchronous receive wakes
/// the loop; then it drains, without blocking, every datagram already queued (many datagrams per
/// wake-up). Several receives in flight on one socket were measured slower: 11k vs 23k round trips/s
/// for one flow (bench/udp-compare.sh), the runtime then stops completing inline. Guards against reflection abuse
/// ("Loop DoS", CVE-2024-2169): datagrams from source ports below 1024 (other services' well-known ports)
/// are dropped, and each source address gets a token bucket of <see cref="EchoServerOptions.UdpRate"/>
/// datagrams per second. Drops are counted and logged at most once a second.
/// </summary>
internal sealed class DatagramEchoService : IDisposable
{
    private const int MaxDatagram = 65_536; // larger than any UDP payload (65,507 over IPv4, 65,527 over IPv6): nothing is truncated
    private const int Loops = 1;

    private readonly Socket _socket;
    private readonly EchoServerOptions _options;
    private readonly ILogger _logger;
    private readonly IPayloadSink? _sink;
    private readonly ConcurrentDictionary<IPAddress, TokenBucket> _buckets = new();
    private readonly Task[] _loops;
    private long _echoed;
    private long _droppedLowPort;
    private long _droppedRate;
    private long _lastWarningTicks = long.MinValue / 2;
    private volatile bool _closed;

    private DatagramEchoService(Socket socket, EchoServerOptions options, ILogger logger, IPayloadSink? sink)
    {
        _socket = socket;
        _options = options;
        _logger = logger;
        _sink = sink;
        LocalEndPoint = (IPEndPoint)socket.LocalEndPoint!;
        socket.Blocking = false; // synchronous calls return EAGAIN instead of waiting; async ones are unaffected
        _loops = Enumerable.Range(0, Loops).Select(_ => Task.Run(ReceiveLoopAsync)).ToArray();
    }

    public IPEndPoint LocalEndPoint { get; }

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

            socket.SetRawSocketOption(SocketOptionLevels.SolSocket, SocketOptionLevels.SoReuseAddr, BitConverter.GetBytes(1));
            socket.Bind(endPoint);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new ListenFailedException("bind (udp)", endPoint, e.SocketErrorCode, e);
        }

        return new DatagramEchoService(socket, options, logger, sink);
    }

    private async Task ReceiveLoopAsync()
    {
        var buffer = GC.AllocateUninitializedArray<byte>(MaxDatagram, pinned: true);
        var from = new SocketAddress(_socket.AddressFamily);
        while (!_closed)
        {
            int received;
            try
            {
                received = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, from).ConfigureAwait(false);
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
                    received = _socket.ReceiveFrom(buffer, SocketFlags.None, from);
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
        var sender = (IPEndPoint)LocalEndPoint.Create(from);
        if (sender.Port < 1024 && !_options.UdpAllowLowPorts)
        {
            Dropped(ref _droppedLowPort);
            return;
        }

        if (_options.UdpRate > 0 && !_buckets.GetOrAdd(sender.Address, _ => new TokenBucket(_options.UdpRate)).TryTake())
        {
            Dropped(ref _droppedRate);
            return;
        }

        // Non-blocking: a full send buffer drops the reply, which UDP allows, rather than stalling the loop.
        try
        {
            _socket.SendTo(buffer.AsSpan(0, received), SocketFlags.None, from);
            Interlocked.Increment(ref _echoed);
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
        long now = Environment.TickCount64;
        long last = Interlocked.Read(ref _lastWarningTicks);
        if (now - last >= 1000 && Interlocked.CompareExchange(ref _lastWarningTicks, now, last) == last)
        {
            Log.UdpDropped(_logger, Interlocked.Read(ref _droppedLowPort), Interlocked.Read(ref _droppedRate));
        }
    }

    public void Dispose()
    {
        _closed = true;
        _socket.Dispose();
        Task.WaitAll(_loops, TimeSpan.FromSeconds(5));
        Log.UdpSummary(_logger, Echoed, Interlocked.Read(ref _droppedLowPort), Interlocked.Read(ref _droppedRate));
    }

    /// <summary>Datagrams per second per source address, with a burst of one second's worth.</summary>
    private sealed class TokenBucket(int perSecond)
    {
        private readonly object _gate = new();
        private double _tokens = perSecond;
        private long _lastTicks = Environment.TickCount64;

        public bool TryTake()
        {
            lock (_gate)
            {
                long now = Environment.TickCount64;
                _tokens = Math.Min(perSecond, _tokens + (now - _lastTicks) * perSecond / 1000.0);
                _lastTicks = now;
                if (_tokens < 1)
                {
                    return false;
                }

                _tokens -= 1;
                return true;
            }
        }
    }
}

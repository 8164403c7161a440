using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal;

/// <summary>
/// UDP echo (RFC 862): every datagram goes back to its sender unchanged. Several receives are in flight
/// at once (one loop each) so that one wake-up is not one datagram. Guards against reflection abuse
/// ("Loop DoS", CVE-2024-2169): datagrams from source ports below 1024 (other services' well-known ports)
/// are dropped, and each source address gets a token bucket of <see cref="EchoServerOptions.UdpRate"/>
/// datagrams per second. Drops are counted and logged at most once a second.
/// </summary>
internal sealed class DatagramEchoService : IDisposable
{
    private const int MaxDatagram = 65_536; // larger than any UDP payload (65,507 over IPv4, 65,527 over IPv6): nothing is truncated
    private const int Loops = 4;

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

            var sender = (IPEndPoint)LocalEndPoint.Create(from);
            if (sender.Port < 1024 && !_options.UdpAllowLowPorts)
            {
                Dropped(ref _droppedLowPort);
                continue;
            }

            if (_options.UdpRate > 0 && !_buckets.GetOrAdd(sender.Address, _ => new TokenBucket(_options.UdpRate)).TryTake())
            {
                Dropped(ref _droppedRate);
                continue;
            }

            try
            {
                await _socket.SendToAsync(buffer.AsMemory(0, received), SocketFlags.None, from).ConfigureAwait(false);
                Interlocked.Increment(ref _echoed);
            }
            catch (SocketException)
            {
                // The sender cannot be reached (ICMP) or the send buffer is full: UDP makes no promises.
            }

            if (_sink is not null)
            {
                await _sink.WriteAsync(0, buffer.AsMemory(0, received)).ConfigureAwait(false);
            }
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

using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace EchoKit.Bench;

/// <summary>
/// One benchmark connection. Closed loop: keep <see cref="BenchOptions.Depth"/> messages in flight,
/// sending one more as each comes back. Open loop: a sender puts messages out on schedule, the
/// receiver matches them as they return. Either way the receiver checks every byte.
/// </summary>
internal sealed class LoadConnection : ILoadFlow
{
    private readonly LoadGenerator _owner;
    private readonly Socket _socket;
    private readonly System.Net.Security.SslStream? _tls;
    private readonly int _size;
    private readonly MessageLedger _ledger;
    private readonly byte[] _receiveBuffer;
    private long _sendPosition;
    private volatile bool _failed;

    private LoadConnection(LoadGenerator owner, Socket socket, System.Net.Security.SslStream? tls, long startOffset)
    {
        _owner = owner;
        _socket = socket;
        _tls = tls;
        _size = owner.Options.MessageSize;
        _ledger = new MessageLedger(owner.Options, startOffset);
        _receiveBuffer = new byte[Math.Max(64 * 1024, _size)];
        _sendPosition = startOffset;
    }

    public long MeasuredMessages => _ledger.MeasuredMessages;

    public long Mismatches => _ledger.Mismatches;

    public long Overruns { get; private set; }

    public bool Failed => _failed;

    public long InFlight => _ledger.InFlight;

    public long LastReceiveTimestamp => _ledger.LastReceiveTimestamp;

    public bool Unsolicited => _ledger.Unsolicited;

    public static LoadConnection Open(LoadGenerator owner, int index, Socket connected, System.Net.Security.SslStream? tls = null) =>
        new(owner, connected, tls, owner.StartOffset(index));

    /// <summary>A Unix stream socket, or a TCP one with TCP_NODELAY.</summary>
    private static Socket NewStreamSocket(EndPoint endPoint) => endPoint is UnixDomainSocketEndPoint
        ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
        : new Socket(endPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };

    /// <summary>
    /// Connects and reads the greeting, with synchronous calls only (the generator runs it on threads of its
    /// own, LongRunning, not on the thread pool's few, which these blocking calls would hold up): for
    /// sockets the epoll engine will drive, an asynchronous call would register the socket with the
    /// runtime's own epoll thread, which then wakes up for every message beside our loop (measured: 60k
    /// vs 107k msgs/s with 100 connections, 30k involuntary context switches in 3 s). The connect
    /// timeout is SO_SNDTIMEO, which Linux applies to connect(). The socket is closed on failure.
    /// </summary>
    internal static (Socket Socket, System.Net.Security.SslStream? Tls) ConnectBlocking(BenchOptions options, EndPoint endPoint, int? skipGreeting, bool greetingExpected, out GreetingSeen seen)
    {
        var socket = NewStreamSocket(endPoint);
        try
        {
            socket.SendTimeout = (int)Math.Min(int.MaxValue, options.ConnectTimeout.TotalMilliseconds);
            try
            {
                socket.Connect(endPoint);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.InProgress or SocketError.WouldBlock)
            {
                throw new SocketException((int)SocketError.TimedOut); // SO_SNDTIMEO ran out
            }

            socket.SendTimeout = 0;
            if (options.ProxyHeaderVersion is { } version)
            {
                socket.Send(Internal.Proxy.ProxyHeader.Build(version, (IPEndPoint)socket.LocalEndPoint!, (IPEndPoint)socket.RemoteEndPoint!));
            }

            if (options.Tls)
            {
                var tls = HandshakeBlocking(socket, endPoint, options);
                try
                {
                    seen = SkipGreetingBlocking(ReadThrough(tls), skipGreeting, greetingExpected);
                    tls.ReadTimeout = Timeout.Infinite;
                    return (socket, tls);
                }
                catch
                {
                    tls.Dispose();
                    throw;
                }
            }

            seen = SkipGreetingBlocking(ReadThrough(socket), skipGreeting, greetingExpected);
            return (socket, null);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>What the detection of a greeting found (or that a count was given).</summary>
    internal enum GreetingSeen
    {
        Counted,
        None,
        EchoKit,
        Other,
    }

    /// <summary>
    /// Reads the server's greeting. A count reads exactly that many bytes. Auto: wait up to 300 ms for
    /// unsolicited bytes (up to 10 s when <paramref name="greetingExpected"/>: another connection has seen
    /// one, and a busy server may be slow to send it); EchoKit's 181-byte greeting is read whole, anything
    /// else until 100 ms pass quietly.
    /// </summary>
    /// <summary>Reads into buffer[offset..offset+count]: the bytes read (0: closed), or -1 when nothing came within the wait.</summary>
    private delegate int TimedRead(byte[] buffer, int offset, int count, TimeSpan wait);

    private static TimedRead ReadThrough(Socket socket) =>
        (buffer, offset, count, wait) => socket.Poll(wait, SelectMode.SelectRead) ? socket.Receive(buffer, offset, count, SocketFlags.None) : -1;

    private static TimedRead ReadThrough(System.Net.Security.SslStream tls) => (buffer, offset, count, wait) =>
    {
        tls.ReadTimeout = (int)Math.Max(1, wait.TotalMilliseconds);
        try
        {
            return tls.Read(buffer, offset, count);
        }
        catch (IOException e) when (e.InnerException is SocketException { SocketErrorCode: SocketError.TimedOut or SocketError.WouldBlock })
        {
            return -1;
        }
    };

    /// <summary>The TLS handshake on a connected socket, within the connect timeout; verified as <c>connect --tls</c> verifies.</summary>
    private static System.Net.Security.SslStream HandshakeBlocking(Socket socket, EndPoint endPoint, BenchOptions options)
    {
        string host = endPoint is IPEndPoint && !string.IsNullOrEmpty(options.Host) && options.UnixPath is null ? options.Host : "localhost";
        try
        {
            return Client.TlsConnector.AuthenticateAsync(socket, host, options.TlsClient ?? new Client.TlsClientOptions(), options.ConnectTimeout).GetAwaiter().GetResult();
        }
        catch (Client.TlsHandshakeException e)
        {
            throw new IOException(e.Message, e);
        }
    }

    private static GreetingSeen SkipGreetingBlocking(TimedRead read, int? count, bool greetingExpected)
    {
        var buffer = new byte[Math.Max(4096, count ?? 0)];
        if (count is { } exact)
        {
            int got = 0;
            while (got < exact)
            {
                int part = read(buffer, got, exact - got, TimeSpan.FromSeconds(10));
                if (part < 0)
                {
                    throw new SocketException((int)SocketError.TimedOut);
                }

                if (part == 0)
                {
                    throw new IOException("the server closed the connection before the benchmark started");
                }

                got += part;
            }

            return GreetingSeen.Counted;
        }

        var greeting = Greeting.Bytes.Span;
        int total = 0;
        var wait = greetingExpected ? TimeSpan.FromSeconds(10) : TimeSpan.FromMilliseconds(300);
        int n;
        while ((n = read(buffer, 0, total < greeting.Length ? greeting.Length - total : buffer.Length, wait)) >= 0)
        {
            if (n == 0)
            {
                throw new IOException("the server closed the connection before the benchmark started");
            }

            bool isEchoKitGreeting = total + n <= greeting.Length && buffer.AsSpan(0, n).SequenceEqual(greeting.Slice(total, n));
            total += n;
            if (isEchoKitGreeting && total == greeting.Length)
            {
                return GreetingSeen.EchoKit;
            }

            wait = TimeSpan.FromMilliseconds(100);
        }

        if (total == 0 && greetingExpected)
        {
            throw new SocketException((int)SocketError.TimedOut); // no greeting where the others had one
        }

        return total == 0 ? GreetingSeen.None : GreetingSeen.Other;
    }

    public async Task RunAsync()
    {
        try
        {
            if (_owner.Options.Rate is { } rate)
            {
                await Task.WhenAll(SendOnScheduleAsync(rate / _owner.Options.Connections), ReceiveLoopAsync(closedLoop: false)).ConfigureAwait(false);
            }
            else
            {
                await SendAsync(_owner.Options.Depth, Stopwatch.GetTimestamp()).ConfigureAwait(false);
                await ReceiveLoopAsync(closedLoop: true).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            if (!_owner.Stopping)
            {
                _failed = true;
                _owner.ReportDrop(e is SocketException se ? se.SocketErrorCode : null);
            }
        }
    }

    /// <summary>Queues <paramref name="count"/> messages stamped <paramref name="timestamp"/> and sends them in one call.</summary>
    private async ValueTask SendAsync(int count, long timestamp)
    {
        _ledger.Sent(count, timestamp);
        await WritePatternAsync(count).ConfigureAwait(false);
    }

    /// <summary>Sends the next <paramref name="count"/> messages' bytes of this connection's pattern stream.</summary>
    private async ValueTask WritePatternAsync(int count)
    {
        long bytes = (long)count * _size;
        while (bytes > 0)
        {
            int chunk = (int)Math.Min(bytes, LoadGenerator.PatternLength);
            if (_tls is not null)
            {
                await _tls.WriteAsync(_owner.PatternMemory(_sendPosition, chunk)).ConfigureAwait(false);
            }
            else
            {
                await Client.SocketTransfer.SendAllAsync(_socket, _owner.PatternMemory(_sendPosition, chunk)).ConfigureAwait(false);
            }

            _sendPosition += chunk;
            bytes -= chunk;
        }
    }

    private async Task ReceiveLoopAsync(bool closedLoop)
    {
        while (!_owner.Stopping)
        {
            int n = _tls is not null
                ? await _tls.ReadAsync(_receiveBuffer).ConfigureAwait(false)
                : await _socket.ReceiveAsync(_receiveBuffer, SocketFlags.None).ConfigureAwait(false);
            if (n == 0)
            {
                if (!_owner.Stopping)
                {
                    _failed = true; // dropped by the server
                    _owner.ReportDrop(null);
                }

                return;
            }

            int completed = _ledger.Received(_receiveBuffer.AsSpan(0, n), _owner.Pattern(_ledger.ReceivePosition, n), Stopwatch.GetTimestamp(),
                _owner.Measuring ? _owner.ThreadHistogram : null);
            if (closedLoop && completed > 0 && !_owner.Stopping)
            {
                await SendAsync(completed, Stopwatch.GetTimestamp()).ConfigureAwait(false);
            }
        }
    }

    private async Task SendOnScheduleAsync(double perSecond)
    {
        double interval = Stopwatch.Frequency / perSecond;
        double next = Stopwatch.GetTimestamp();
        while (!_owner.Stopping)
        {
            long now = Stopwatch.GetTimestamp();
            int due = 0;
            long firstScheduled = (long)next;
            while (next <= now && due < 4096)
            {
                due++;
                next += interval;
            }

            if (due > 0)
            {
                if (!_ledger.HasRoomFor(due))
                {
                    Overruns++; // the server is too far behind: stop adding to the backlog
                    next = now + interval;
                }
                else
                {
                    // Each message keeps its own scheduled time: latency counts any wait for the sender.
                    _ledger.Scheduled(due, firstScheduled, interval);

                    await WritePatternAsync(due).ConfigureAwait(false);
                }
            }

            double waitMs = (next - Stopwatch.GetTimestamp()) * 1000.0 / Stopwatch.Frequency;
            if (waitMs >= 1)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(waitMs)).ConfigureAwait(false);
            }
            else
            {
                await Task.Yield();
            }
        }
    }

    public void Close()
    {
        try
        {
            _tls?.Dispose();
            _socket.Dispose();
        }
        catch (ObjectDisposedException)
        {
            // Already closed.
        }
    }
}

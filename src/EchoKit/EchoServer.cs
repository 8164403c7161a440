using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using EchoKit.Internal;
using EchoKit.Internal.Epoll;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace EchoKit;

/// <summary>
/// The TCP echo server: listeners, the set of live connections, limits and graceful shutdown.
/// The per-connection work is in <see cref="EchoConnection"/>; the accept loop in <see cref="StreamListener"/>.
/// </summary>
public sealed class EchoServer : IAsyncDisposable
{
    /// <summary>At shutdown, a connection that has had no data for this long has echoed all it will get.</summary>
    private const long DrainQuietMs = 100;

    private readonly ILogger _logger;
    private readonly List<StreamListener> _listeners = [];
    private readonly List<Task> _acceptLoops = [];
    private readonly List<DatagramEchoService> _datagramServices = [];
    private readonly ConcurrentDictionary<long, EchoConnection> _connections = new();
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private ConnectionHeartbeat? _heartbeat;
    private EpollLoop[]? _loops;
    private (int Limit, byte[] Line)? _busyLine;
    private int _connectionLimit; // 0: unlimited; lowered under _limitLock when descriptors run short
    private readonly Lock _limitLock = new();
    private int _startConnectionLimit; // the limit in force at start; restored once the descriptors allow it again
    private long _startDescriptorLimit = long.MaxValue;
    private List<Microsoft.Win32.SafeHandles.SafeFileHandle>? _reserve; // spare descriptors, freed at EMFILE
    private long _nextId;
    private int _activeCount;
    private int _state; // 0 new, 1 started, 2 stopping/stopped
    private Task? _stopTask;

    public EchoServer(EchoServerOptions options, ILogger? logger = null, IPayloadSink? payloadSink = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        Options = options;
        _logger = logger ?? NullLogger.Instance;
        PayloadSink = payloadSink;
    }

    public EchoServerOptions Options { get; }

    internal IPayloadSink? PayloadSink { get; }

    /// <summary>Where the server listens (with the real port when <see cref="EchoServerOptions.Port"/> was 0).</summary>
    public IReadOnlyList<IPEndPoint> LocalEndPoints =>
        _listeners.Select(l => l.LocalEndPoint).Concat(_datagramServices.Select(d => d.LocalEndPoint)).OfType<IPEndPoint>().ToArray();

    /// <summary>Connections open right now.</summary>
    public int ActiveConnections => Volatile.Read(ref _activeCount);

    /// <summary>Raised once per connection when it has closed, on the connection's thread.</summary>
    public event Action<ClosedConnection>? ConnectionClosed;

    /// <summary>Binds every address and starts accepting. Throws <see cref="ListenFailedException"/>.</summary>
    public void Start()
    {
        if (Interlocked.CompareExchange(ref _state, 1, 0) != 0)
        {
            throw new InvalidOperationException("The server was already started.");
        }

        try
        {
            if (Options.UnixPath is { } path)
            {
                if (Options.Tcp && Options.Udp)
                {
                    throw new InvalidOperationException("A Unix socket file is either a stream or a datagram socket: serve one per path.");
                }

                if (Options.Udp)
                {
                    _datagramServices.Add(DatagramEchoService.OpenUnix(path, Options, _logger, PayloadSink));
                }
                else
                {
                    _listeners.Add(StreamListener.OpenUnix(path, Options.Backlog, Options.UnixMode, _logger));
                }
            }
            else
            {
                int port = Options.Port;
                foreach (var address in AddressesToBind())
                {
                    if (Options.Tcp)
                    {
                        var listener = StreamListener.Open(address, port, Options.Backlog, dualStack: Options.Family is null, _logger);
                        _listeners.Add(listener);
                        port = ((IPEndPoint)listener.LocalEndPoint).Port; // with port 0, every socket gets the port the first one got
                    }

                    if (Options.Udp)
                    {
                        var datagrams = DatagramEchoService.Open(address, port, dualStack: Options.Family is null, Options, _logger, PayloadSink);
                        _datagramServices.Add(datagrams);
                        port = ((IPEndPoint)datagrams.LocalEndPoint).Port;
                    }
                }
            }
        }
        catch
        {
            foreach (var listener in _listeners)
            {
                listener.Dispose();
            }

            foreach (var datagrams in _datagramServices)
            {
                datagrams.Dispose();
            }

            _listeners.Clear();
            _datagramServices.Clear();
            throw;
        }

        foreach (var datagrams in _datagramServices)
        {
            bool dualStack = datagrams.LocalEndPoint is IPEndPoint ip && ip.Address.Equals(IPAddress.IPv6Any) && Options.Family is null;
            Log.Listening(_logger, datagrams.UnixPath is not null
                ? EndPointText.Format(datagrams.LocalEndPoint) + " (datagram)"
                : "udp " + EndPointText.Format(datagrams.LocalEndPoint) + (dualStack ? " (dual-stack: IPv4 and IPv6)" : ""));
        }

        _connectionLimit = _startConnectionLimit = EffectiveConnectionLimit();
        _startDescriptorLimit = DescriptorBudget.CurrentLimit() ?? long.MaxValue;
        _reserve = DescriptorBudget.OpenReserve();

        foreach (var listener in _listeners)
        {
            Log.Listening(_logger, EndPointText.Format(listener.LocalEndPoint) + (listener.IsDualStack ? " (dual-stack: IPv4 and IPv6)" : ""));
        }

        if (UsesEpoll)
        {
            var descriptors = _listeners.Select(l => l.DescriptorForEpoll()).ToArray();
            int count = Options.EngineLoops > 0 ? Options.EngineLoops : Environment.ProcessorCount;
            _loops = new EpollLoop[_listeners.Count == 0 ? 0 : count];
            for (int i = 0; i < _loops.Length; i++)
            {
                _loops[i] = new EpollLoop(i, this, _logger, descriptors);
            }

            return;
        }

        if (Options.IdleTimeout > TimeSpan.Zero || Options.SendTimeout > TimeSpan.Zero)
        {
            _heartbeat = new ConnectionHeartbeat(Options.IdleTimeout, Options.SendTimeout,
                () => _connections.Values);
        }

        foreach (var listener in _listeners)
        {
            _acceptLoops.Add(Task.Run(() => listener.AcceptLoopAsync(OnAccepted, OnDescriptorsExhausted)));
        }
    }

    /// <summary>Whether this machine can run the epoll engine.</summary>
    public static bool EpollSupported => Native.IsSupported;

    /// <summary>Whether stream connections run on the epoll engine (<see cref="EchoEngine"/>).</summary>
    public bool UsesEpoll => Options.Engine switch
    {
        EchoEngine.Socket => false,
        EchoEngine.Epoll => Native.IsSupported ? true : throw new PlatformNotSupportedException("The epoll engine runs on Linux x86-64 only."),
        _ => Native.IsSupported,
    };

    /// <summary>The connection limit in force: --max-connections, lowered to what the descriptor limit allows.</summary>
    public int ConnectionLimit => _connectionLimit;

    private int EffectiveConnectionLimit()
    {
        int configured = Options.MaxConnections;
        int? budget = DescriptorBudget.Connections(_listeners.Count);
        if (budget is { } fit && (configured == 0 || fit < configured))
        {
            Log.DescriptorLimited(_logger, fit, configured == 0 ? "unlimited" : configured.ToString(System.Globalization.CultureInfo.InvariantCulture));
            return fit;
        }

        return configured;
    }

    private IEnumerable<IPAddress> AddressesToBind()
    {
        if (Options.BindAddresses.Count > 0)
        {
            return Options.BindAddresses.Distinct();
        }

        return Options.Family switch
        {
            AddressFamily.InterNetwork => [IPAddress.Any],
            AddressFamily.InterNetworkV6 => [IPAddress.IPv6Any],
            _ => [Socket.OSSupportsIPv6 ? IPAddress.IPv6Any : IPAddress.Any],
        };
    }

    internal enum Admission
    {
        Admitted,
        Busy,
        Stopping,
    }

    /// <summary>
    /// Counts a new connection (its <paramref name="descriptor"/>) in, or says why not: over the limit,
    /// too close to the descriptor limit, or accepted as the server stops.
    /// </summary>
    internal Admission Admit(int descriptor, out long id)
    {
        id = Interlocked.Increment(ref _nextId);
        if (DescriptorBudget.NearLimit(descriptor, out long limit))
        {
            CapAtOpenConnections(limit);
            return Admission.Busy;
        }

        if (Capped && limit >= _startDescriptorLimit && descriptor < limit - 2 * DescriptorBudget.Reserve)
        {
            RestoreStartLimit();
        }

        int count = Interlocked.Increment(ref _activeCount);
        if (_connectionLimit > 0 && count > _connectionLimit)
        {
            Interlocked.Decrement(ref _activeCount);
            return Admission.Busy;
        }

        if (Volatile.Read(ref _state) != 1)
        {
            Interlocked.Decrement(ref _activeCount);
            return Admission.Stopping;
        }

        return Admission.Admitted;
    }

    /// <summary>The line a connection over the limit gets before it is closed.</summary>
    internal byte[] BusyLine()
    {
        var cached = _busyLine;
        int limit = _connectionLimit; // lowered at EMFILE, so cached per value
        if (cached is not { } line || line.Limit != limit)
        {
            _busyLine = cached = (limit, System.Text.Encoding.ASCII.GetBytes($"server busy: {limit} connections\n"));
        }

        return cached.Value.Line;
    }

    internal void ReportAccepted(long id, EndPoint? peer) => Log.Accepted(_logger, id, EndPointText.Format(peer));

    internal void ReportBusy(EndPoint? peer)
    {
        Log.Busy(_logger, EndPointText.Format(peer), _connectionLimit);
        ConnectionClosed?.Invoke(new ClosedConnection(0, peer, CloseReason.ServerBusy, SocketError.Success, 0, 0, TimeSpan.Zero));
    }

    internal void ReportAbortingAtShutdown(int count) => Log.AbortingAtShutdown(_logger, count);

    /// <summary>A connection has ended: uncounted, logged, and announced.</summary>
    internal void ReportClosed(ClosedConnection closed)
    {
        Interlocked.Decrement(ref _activeCount);
        Log.Closed(_logger, closed.Id, EndPointText.Format(closed.Peer), Log.ReasonText(closed.Reason, closed.Error),
            closed.BytesIn, closed.BytesOut, (long)closed.Duration.TotalMilliseconds);
        ConnectionClosed?.Invoke(closed);
    }

    private void OnAccepted(Socket socket)
    {
        switch (Admit((int)socket.Handle, out long id))
        {
            case Admission.Busy:
                RefuseBusy(socket);
                return;
            case Admission.Stopping:
                socket.Dispose(); // accepted in the instant the listener was closing
                return;
        }

        try
        {
            if (socket.ProtocolType == ProtocolType.Tcp)
            {
                socket.NoDelay = Options.NoDelay;
            }
        }
        catch (SocketException)
        {
            // The peer is already gone; the connection's first call will say so.
        }

        var connection = new EchoConnection(id, socket, this);
        Log.Accepted(_logger, id, EndPointText.Format(connection.Peer));
        // Registered before it runs, so that its close always finds the entry to remove. Nothing keeps
        // its Task: the connection reports its own end (OnConnectionClosed), which is all StopAsync needs.
        _connections[id] = connection;
        _ = connection.RunAsync();
    }

    /// <summary>
    /// Accept met EMFILE/ENFILE although the budget taken at start should have prevented it (the limit
    /// was lowered under us, or something else holds descriptors): hand the runtime the spare
    /// descriptors it needs to keep running, and lower the connection limit below what is open now,
    /// so that further accepts are answered "server busy" and closed instead of eating the spares.
    /// </summary>
    internal void OnDescriptorsExhausted()
    {
        var reserve = Interlocked.Exchange(ref _reserve, null);
        if (reserve is null)
        {
            return;
        }

        int lowered = Math.Max(1, ActiveConnections - reserve.Count);
        lock (_limitLock)
        {
            _connectionLimit = _connectionLimit == 0 ? lowered : Math.Min(_connectionLimit, lowered);
        }

        foreach (var handle in reserve)
        {
            handle.Dispose();
        }

        Log.DescriptorLimited(_logger, _connectionLimit, "lowered after EMFILE");
    }

    /// <summary>
    /// A new connection came within a third of the reserve of the descriptor limit in force
    /// (<paramref name="limit"/>; lowered under the running server, or descriptors opened since the
    /// budget was taken): no more connections than are open now, so that the runtime keeps the
    /// descriptors it needs. Logged when the connection limit changes.
    /// </summary>
    private void CapAtOpenConnections(long limit)
    {
        int lowered = Math.Max(1, ActiveConnections);
        lock (_limitLock)
        {
            if (_connectionLimit != 0 && _connectionLimit <= lowered)
            {
                return;
            }

            _connectionLimit = lowered;
        }

        Log.DescriptorLimited(_logger, lowered, $"capped at the connections open: the descriptor limit in force is {limit}");
    }

    /// <summary>The connection limit is below the start's for want of descriptors (only lowering changes it).</summary>
    private bool Capped => Volatile.Read(ref _connectionLimit) != _startConnectionLimit;

    /// <summary>
    /// The descriptor limit is back where it was at start and a new descriptor leaves more than twice the
    /// reserve free: the connection limit of the start applies again, with a reserve of spares held anew.
    /// </summary>
    private void RestoreStartLimit()
    {
        lock (_limitLock)
        {
            if (!Capped)
            {
                return;
            }

            _connectionLimit = _startConnectionLimit;
        }

        if (Volatile.Read(ref _reserve) is null && DescriptorBudget.OpenReserve() is { } spares
            && Interlocked.CompareExchange(ref _reserve, spares, null) is not null)
        {
            spares.ForEach(handle => handle.Dispose()); // another restore took its spares first
        }

        Log.DescriptorLimited(_logger, _startConnectionLimit, "restored: the descriptor limit is back to " + _startDescriptorLimit.ToString(System.Globalization.CultureInfo.InvariantCulture));
    }

    private void RefuseBusy(Socket socket)
    {
        var peer = EndPointText.PeerOf(socket);
        try
        {
            socket.Blocking = false;
            socket.Send(BusyLine(), SocketFlags.None, out _);
            socket.Shutdown(SocketShutdown.Send);
        }
        catch (SocketException)
        {
            // Best effort: the peer may already be gone.
        }
        finally
        {
            socket.Dispose();
        }

        ReportBusy(peer);
    }

    internal void OnConnectionClosed(EchoConnection connection, ClosedConnection closed)
    {
        // Logged and announced before the stop can see the server drained: otherwise the "stopped" line,
        // and the process's exit, could overtake this connection's "closed" line.
        ReportClosed(closed);
        _connections.TryRemove(connection.Id, out _);
        if (Volatile.Read(ref _state) == 2 && _connections.IsEmpty)
        {
            _drained.TrySetResult();
        }
    }

    /// <summary>
    /// Graceful stop: close the listeners, let every connection echo what it has already received,
    /// FIN, and wait; after <see cref="EchoServerOptions.ShutdownTimeout"/> abort what is left.
    /// </summary>
    public Task StopAsync()
    {
        if (Interlocked.Exchange(ref _state, 2) == 2)
        {
            return _stopTask ?? Task.CompletedTask;
        }

        return _stopTask = StopCoreAsync();
    }

    private async Task StopCoreAsync()
    {
        if (_loops is { } loops)
        {
            await StopLoopsAsync(loops).ConfigureAwait(false);
            return;
        }

        foreach (var listener in _listeners)
        {
            listener.Dispose();
        }

        await Task.WhenAll(_acceptLoops).ConfigureAwait(false);
        foreach (var datagrams in _datagramServices)
        {
            datagrams.Dispose();
        }

        // No accept runs any more, so no connection is added from here on.
        Log.ShuttingDown(_logger, _connections.Count, (long)Options.ShutdownTimeout.TotalMilliseconds);
        if (_connections.IsEmpty)
        {
            _drained.TrySetResult();
        }

        var all = _drained.Task;
        long deadline = MonotonicClock.Milliseconds + (long)Options.ShutdownTimeout.TotalMilliseconds;
        long quietMs = Math.Min(DrainQuietMs, (long)Options.ShutdownTimeout.TotalMilliseconds / 4);
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(10));
        while (!all.IsCompleted && MonotonicClock.Milliseconds < deadline)
        {
            // Each connection says goodbye (FIN) once it has echoed what it had and gone quiet.
            long now = MonotonicClock.Milliseconds;
            foreach (var connection in _connections.Values)
            {
                connection.TryFinishDrain(now, quietMs);
            }

            await Task.WhenAny(all, tick.WaitForNextTickAsync().AsTask()).ConfigureAwait(false);
        }

        if (!all.IsCompleted)
        {
            var left = _connections.Values.ToArray();
            Log.AbortingAtShutdown(_logger, left.Length);
            foreach (var connection in left)
            {
                connection.Abort(CloseReason.ShutdownTimeout, reset: true);
            }

            await all.ConfigureAwait(false);
        }

        _heartbeat?.Dispose();
        Log.Stopped(_logger, GC.GetTotalAllocatedBytes(precise: true));
    }

    /// <summary>The epoll engine's graceful stop: the loops stop accepting, drain, and exit.</summary>
    private async Task StopLoopsAsync(EpollLoop[] loops)
    {
        await Task.WhenAll(loops.Select(l => l.StopAcceptingAsync())).ConfigureAwait(false);
        foreach (var listener in _listeners)
        {
            listener.Dispose(); // no loop accepts from it any more
        }

        foreach (var datagrams in _datagramServices)
        {
            datagrams.Dispose();
        }

        Log.ShuttingDown(_logger, ActiveConnections, (long)Options.ShutdownTimeout.TotalMilliseconds);
        long deadline = MonotonicClock.Milliseconds + (long)Options.ShutdownTimeout.TotalMilliseconds;
        long quietMs = Math.Min(DrainQuietMs, (long)Options.ShutdownTimeout.TotalMilliseconds / 4);
        foreach (var loop in loops)
        {
            loop.Drain(deadline, quietMs);
        }

        await Task.WhenAll(loops.Select(l => l.Exited)).ConfigureAwait(false);
        Log.Stopped(_logger, GC.GetTotalAllocatedBytes(precise: true));
    }

    public async ValueTask DisposeAsync()
    {
        if (Volatile.Read(ref _state) == 1)
        {
            await StopAsync().ConfigureAwait(false);
        }
        else
        {
            Volatile.Write(ref _state, 2);
            foreach (var listener in _listeners)
            {
                listener.Dispose();
            }
        }
    }
}

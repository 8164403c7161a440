using System.Net;
using System.Net.Sockets;
using EchoKit.Internal;
using EchoKit.Internal.Datagrams;
using EchoKit.Internal.Epoll;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace EchoKit;

/// <summary>
/// The TCP echo server: listeners, the set of live connections, limits and graceful shutdown.
/// The per-connection work is in <see cref="EchoConnection"/> (or the epoll engine's loops); the accept loop in
/// <see cref="StreamListener"/>. Limits and the descriptor budget are in EchoServer.Limits.cs, the graceful stop
/// in EchoServer.Stopping.cs.
/// </summary>
public sealed partial class EchoServer : IAsyncDisposable
{
    /// <summary>At shutdown, a connection that has had no data for this long has echoed all it will get.</summary>
    private const long DrainQuietMs = 100;

    private readonly ILogger _logger;
    private readonly List<StreamListener> _listeners = [];
    private readonly List<DatagramEchoService> _datagramServices = [];
    private IStreamEngine? _engine;
    private (int Limit, byte[] Line)? _busyLine;
    private int _connectionLimit; // 0: unlimited; lowered under _limitLock when descriptors run short
    private readonly Lock _limitLock = new();
    private int _startConnectionLimit; // the limit in force at start; restored once the descriptors allow it again
    private long _startDescriptorLimit = long.MaxValue;
    private List<Microsoft.Win32.SafeHandles.SafeFileHandle>? _reserve; // spare descriptors, freed at EMFILE
    private long _nextId;
    private int _activeCount;
    private int _state; // a ServerState, as int for Interlocked and Volatile

    /// <summary>Other threads change it (Start, StopAsync) while loops read it.</summary>
    private ServerState State => (ServerState)Volatile.Read(ref _state);

    /// <summary>Moves to <paramref name="next"/>; returns the state before.</summary>
    private ServerState Exchange(ServerState next) => (ServerState)Interlocked.Exchange(ref _state, (int)next);

    private enum ServerState
    {
        New,
        Started,
        /// <summary>Stopping or stopped: set once, by the first StopAsync or DisposeAsync.</summary>
        Stopping,
    }
    private Task? _stopTask;

    public EchoServer(EchoServerOptions options, ILogger? logger = null, IPayloadSink? payloadSink = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        Options = options;
        _logger = logger ?? NullLogger.Instance;
        PayloadSink = payloadSink;
        _admission = new AdmissionStage(this);
        // Always there, even with no rules yet: a reload may bring some (Reconfigure).
        _access = new Internal.Access.AccessStage(options.Access ?? new Internal.Access.AccessSettings(), _logger);
        _metrics = new ServerMetrics(this);
    }

    private readonly AdmissionStage _admission;
    private readonly ServerMetrics _metrics;

    /// <summary>An accept loop backed off after a failure of its listener (EMFILE …).</summary>
    internal void CountAcceptBackoff(System.Net.Sockets.SocketError error) => _metrics.AcceptBackoff(error);

    /// <summary>The datagram services (for their counts).</summary>
    internal IReadOnlyList<Internal.Datagrams.DatagramEchoService> DatagramServices => _datagramServices;

    /// <summary>Bytes moved so far by the stream connections open now (the closed ones are counted as they close).</summary>
    internal (long In, long Out) OpenConnectionBytes() => _engine?.OpenBytes() ?? (0, 0);

    /// <summary>This server's instruments (meter <c>EchoKit</c>; one per server, so that tests can tell them apart).</summary>
    internal System.Diagnostics.Metrics.Meter Meter => _metrics.Meter;

    public EchoServerOptions Options { get; private set; }

    internal IPayloadSink? PayloadSink { get; }

    /// <summary>Where the server listens (with the real port when <see cref="EchoServerOptions.Port"/> was 0).</summary>
    public IReadOnlyList<IPEndPoint> LocalEndPoints =>
        _listeners.Select(l => l.LocalEndPoint).Concat(_datagramServices.Select(d => d.LocalEndPoint)).OfType<IPEndPoint>().ToArray();

    /// <summary>Where the server listens, as its "listening on" log lines say it (also for Unix sockets).</summary>
    public IReadOnlyList<string> ListeningOn => _listeningOn;

    private readonly List<string> _listeningOn = [];

    private void ReportListening(string where)
    {
        _listeningOn.Add(where);
        Log.Listening(_logger, where);
    }

    /// <summary>Connections open right now.</summary>
    public int ActiveConnections => Volatile.Read(ref _activeCount);

    /// <summary>Raised once per connection when it has closed, on the connection's thread.</summary>
    public event Action<ClosedConnection>? ConnectionClosed;

    /// <summary>Binds every address and starts accepting. Throws <see cref="ListenFailedException"/>.</summary>
    public void Start()
    {
        if ((ServerState)Interlocked.CompareExchange(ref _state, (int)ServerState.Started, (int)ServerState.New) != ServerState.New)
        {
            throw new InvalidOperationException("The server was already started.");
        }

        EnsureEnoughDescriptors();
        try
        {
            if (Options.Inherited is { } inherited)
            {
                foreach (var socket in inherited)
                {
                    if (socket.SocketType == SocketType.Stream)
                    {
                        var listener = StreamListener.Adopt(socket, _logger);
                        listener.StreamStages = [.. Options.StreamStages, .. TlsStages()];
                        _listeners.Add(listener);
                    }
                    else
                    {
                        _datagramServices.Add(DatagramEchoService.Adopt(socket, Options, _logger, PayloadSink, _access));
                    }
                }
            }
            else if (Options.UnixPath is { } path)
            {
                if (Options.Tcp && Options.Udp)
                {
                    throw new InvalidOperationException("A Unix socket file is either a stream or a datagram socket: serve one per path.");
                }

                if (Options.Udp)
                {
                    _datagramServices.Add(DatagramEchoService.OpenUnix(path, Options, _logger, PayloadSink, _access));
                }
                else
                {
                    var listener = StreamListener.OpenUnix(path, Options.Backlog, Options.UnixMode, _logger);
                    listener.StreamStages = [.. Options.StreamStages, .. TlsStages()];
                    _listeners.Add(listener);
                }
            }
            else
            {
                int port = Options.Port;
                int? tlsPort = null;
                foreach (var address in AddressesToBind())
                {
                    if (Options.Tcp)
                    {
                        var listener = StreamListener.Open(address, port, Options.Backlog, dualStack: Options.Family is null, _logger, Options.ReusePort);
                        listener.StreamStages = [.. Options.StreamStages, .. Options.Tls?.Port is null ? TlsStages() : []];
                        _listeners.Add(listener);
                        port = ((IPEndPoint)listener.LocalEndPoint).Port; // with port 0, every socket gets the port the first one got
                        if (Options.Tls?.Port is { } requested)
                        {
                            var secure = StreamListener.Open(address, tlsPort ?? requested, Options.Backlog, dualStack: Options.Family is null, _logger, Options.ReusePort);
                            secure.StreamStages = [.. Options.StreamStages, .. TlsStages()];
                            _listeners.Add(secure);
                            tlsPort = ((IPEndPoint)secure.LocalEndPoint).Port;
                        }
                    }

                    if (Options.Udp)
                    {
                        var datagrams = DatagramEchoService.Open(address, port, dualStack: Options.Family is null, Options, _logger, PayloadSink, _access);
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
            Exchange(ServerState.New); // not started: a later DisposeAsync has nothing to stop
            throw;
        }

        foreach (var datagrams in _datagramServices)
        {
            bool dualStack = datagrams.LocalEndPoint is IPEndPoint ip && ip.Address.Equals(IPAddress.IPv6Any) && Options.Family is null;
            ReportListening(datagrams.LocalEndPoint is UnixDomainSocketEndPoint
                ? EndPointText.Format(datagrams.LocalEndPoint) + " (datagram)"
                : "udp " + EndPointText.Format(datagrams.LocalEndPoint) + (dualStack ? " (dual-stack: IPv4 and IPv6)" : "")
                    + (datagrams.Loops > 1 ? $" ({datagrams.Loops} loops, SO_REUSEPORT)" : ""));
        }

        _connectionLimit = _startConnectionLimit = EffectiveConnectionLimit();
        _startDescriptorLimit = DescriptorBudget.CurrentLimit() ?? long.MaxValue;
        _reserve = DescriptorBudget.OpenReserve();

        foreach (var listener in _listeners)
        {
            ReportListening(EndPointText.Format(listener.LocalEndPoint) + (listener.IsDualStack ? " (dual-stack: IPv4 and IPv6)" : "")
                + (listener.StreamStages.Contains(_tls) && _tls is not null ? " (TLS)" : ""));
        }

        // The engine is chosen here, once; from here on the server never asks which one it has.
        _engine = UsesEpoll
            ? new EpollStreamEngine(this, _logger, _listeners)
            : new Internal.Sockets.SocketStreamEngine(this, _listeners);
        _engine.Start();

        if (Options.HealthPort is { } healthPort)
        {
            try
            {
                var first = AddressesToBind().First();
                _health = HealthListener.Open(Options.UnixPath is null ? first : IPAddress.Loopback, healthPort, dualStack: Options.Family is null);
            }
            catch (ListenFailedException)
            {
                StopAsync().GetAwaiter().GetResult(); // nothing half-started stays behind
                throw;
            }

            ReportListening(EndPointText.Format(_health.LocalEndPoint) + " (health: answers ok while serving)");
        }

        _migratesBacklog = Options.ReusePort && ReadSysctl("/proc/sys/net/ipv4/tcp_migrate_req") is { } migrate && migrate != "0";
        if (Options.ReusePort && !_migratesBacklog)
        {
            Log.NoMigration(_logger);
        }

        Log.Ready(_logger);
    }

    private Internal.Tls.TlsStage? _tls;
    private HealthListener? _health;
    /// <summary>--reuse-port with tcp_migrate_req: a closing listener's queue moves to the next process by itself.</summary>
    private bool _migratesBacklog;
    private volatile bool _acceptingEnded;

    private static string? ReadSysctl(string path)
    {
        try
        {
            return File.ReadAllText(path).Trim();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>--allow/--deny, --max-per-address, --allow-uid/--allow-gid: checked before admission; null when none is set.</summary>
    private readonly Internal.Access.AccessStage _access;

    /// <summary>The TLS stage, made on first use (it loads the certificate: a bad one stops the start).</summary>
    private IEnumerable<Internal.Stages.IStreamStage> TlsStages()
    {
        if (Options.Tls is null)
        {
            return [];
        }

        _tls ??= new Internal.Tls.TlsStage(Options.Tls, _logger, _metrics.TlsHandshake);
        return [_tls];
    }

    /// <summary>The certificate TLS handshakes present now; null without TLS.</summary>
    internal System.Security.Cryptography.X509Certificates.X509Certificate2? TlsCertificate => _tls?.Leaf;

    /// <summary>
    /// Loads the TLS certificate and key again (SIGHUP), from their files or from those <paramref name="next"/> names,
    /// for new handshakes; established connections keep theirs. A file that does not load leaves the old certificate
    /// in place: the <see cref="Internal.Tls.TlsConfigurationException"/> says why.
    /// </summary>
    internal void ReloadTls(Internal.Tls.TlsSettings? next = null) => _tls?.Reload(next);

    /// <summary>
    /// A reload (SIGHUP): what can change without dropping a connection is taken from <paramref name="next"/>: the
    /// connection limit, the idle, send and shutdown timeouts (for open connections too), the access rules and the
    /// per-address limit (for connections from now on), the UDP rate. Everything else in it is ignored: the
    /// caller says which settings did not apply.
    /// </summary>
    internal void Reconfigure(EchoServerOptions next)
    {
        ArgumentNullException.ThrowIfNull(next);
        var was = Options;
        Options = was with
        {
            MaxConnections = next.MaxConnections,
            IdleTimeout = next.IdleTimeout,
            SendTimeout = next.SendTimeout,
            ShutdownTimeout = next.ShutdownTimeout,
            UdpRate = next.UdpRate,
            Access = next.Access,
        };
        if (next.MaxConnections != was.MaxConnections)
        {
            int limit = EffectiveConnectionLimit();
            lock (_limitLock)
            {
                // Still short of descriptors (Capped): the lower of the two until the descriptors are back.
                bool capped = Capped;
                _startConnectionLimit = limit;
                _connectionLimit = !capped ? limit : limit == 0 ? _connectionLimit : Math.Min(limit, _connectionLimit);
            }
        }

        if (next.IdleTimeout != was.IdleTimeout || next.SendTimeout != was.SendTimeout)
        {
            _engine?.ApplyTimeouts(new TimeoutPolicy(next.IdleTimeout, next.SendTimeout));
        }

        _access.Reload(next.Access ?? new Internal.Access.AccessSettings());
        if (next.UdpRate != was.UdpRate)
        {
            foreach (var service in _datagramServices)
            {
                service.Policy.ApplyRate(next.UdpRate);
            }
        }
    }

    /// <summary>Refuses to start, with what is needed, where the descriptor limit leaves no room to serve anyone.</summary>
    private void EnsureEnoughDescriptors()
    {
        int sockets = Options.UnixPath is not null ? 1
            : AddressesToBind().Count() * ((Options.Tcp ? Options.Tls?.Port is null ? 1 : 2 : 0) + (Options.Udp ? DatagramEchoService.SocketsPerAddress(Options) : 0));
        int loops = Options.Tcp && UsesEpoll ? EpollStreamEngine.LoopCount(Options) : 0;
        int engine = EpollStreamEngine.DescriptorsPerLoop * loops;
        if (DescriptorBudget.Shortfall(sockets + engine) is { } shortfall)
        {
            Exchange(ServerState.New);
            throw new ListenFailedException(
                $"the descriptor limit (ulimit -n) is {shortfall.Limit}, and the server needs at least {shortfall.Needed} to serve one connection "
                + $"({shortfall.OpenNow} open now, {sockets} to listen, {engine} for {loops} event loops, {DescriptorBudget.Reserve} kept free for the runtime, "
                + $"{DescriptorBudget.SpareCount} spares): raise the limit (ulimit -n 1024, LimitNOFILE=) or use fewer --loops",
                SocketError.TooManyOpenSockets);
        }
    }

    /// <summary>Whether this machine can run the epoll engine.</summary>
    public static bool EpollSupported => Native.IsSupported;

    /// <summary>Whether stream connections run on the epoll engine (<see cref="EchoEngine"/>).</summary>
    public bool UsesEpoll => EngineChoice.UsesEpoll(Options.Engine);

    /// <summary>The connection limit in force: --max-connections, lowered to what the descriptor limit allows.</summary>
    public int ConnectionLimit => _connectionLimit;

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

    internal void ReportAccepted(long id, EndPoint? peer) => Log.Accepted(_logger, id, EndPointText.Format(peer));

    /// <summary>A connection has ended: uncounted, logged, and announced.</summary>
    internal void ReportClosed(ClosedConnection closed)
    {
        Interlocked.Decrement(ref _activeCount);
        _access.Released(closed.Id);
        if (PayloadSink is { } sink && _logger.IsEnabled(LogLevel.Information))
        {
            // After the connection's bytes are out: on one terminal, no payload line follows its "closed" line.
            sink.AfterWritten(() => LogClosed(closed));
        }
        else
        {
            LogClosed(closed);
        }

        if (closed.Reason == CloseReason.Refused)
        {
            _metrics.Rejected(closed); // admitted, then refused by a stage (a PROXY header, a TLS handshake, the rules after one)
        }
        else
        {
            _metrics.Closed(closed);
        }

        ConnectionClosed?.Invoke(closed);
    }

    private void LogClosed(ClosedConnection closed)
    {
        Log.Closed(_logger, closed.Id, EndPointText.Format(closed.Peer), Log.ReasonText(closed.Reason, closed.Error, closed.Detail),
            closed.BytesIn, closed.BytesOut, (long)closed.Duration.TotalMilliseconds);
    }
}

using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using EchoKit.Client;
using HdrHistogram;

namespace EchoKit.Bench;

/// <summary>
/// The load generator behind <c>echokit bench</c>, measuring the way echoload does:
/// every connection streams a shared pseudo-random pattern from its own offset, every echoed byte
/// is compared, and a message's latency runs from the moment it was queued for sending (or, in
/// open loop, scheduled) to the moment its last byte is back.
/// </summary>
public sealed class LoadGenerator
{
    internal const int PatternLength = 1 << 20;
    public const int MaxMessageSize = 1 << 20;

    private readonly BenchOptions _options;
    private readonly byte[] _pattern;
    private readonly List<ILoadFlow> _workers = [];
    private readonly ConcurrentBag<LongHistogram> _histograms = [];
    private readonly ThreadLocal<LongHistogram> _histogram;
    private readonly long _start = Stopwatch.GetTimestamp();
    private volatile RunPhase _phase;

    private enum RunPhase
    {
        Connecting,
        Warmup,
        Measuring,
        Done,
    }
    private int _connectFailures;
    private readonly TaskCompletionSource _stopEarly = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _dropped; // under the _workers lock: a connection failed during the run (FirstDropError says why)

    public LoadGenerator(BenchOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options;
        // Twice the pattern, so that any window of up to PatternLength bytes is contiguous.
        _pattern = GC.AllocateArray<byte>(2 * PatternLength, pinned: true); // pinned: the UDP loop sends from it by address
        new Random(options.Seed).NextBytes(_pattern.AsSpan(0, PatternLength));
        _pattern.AsSpan(0, PatternLength).CopyTo(_pattern.AsSpan(PatternLength));
        _histogram = new ThreadLocal<LongHistogram>(() =>
        {
            // 100 ns units up to an hour, 3 significant digits; one per thread, merged at the end.
            var histogram = new LongHistogram(TimeSpan.FromHours(1).Ticks, 3);
            _histograms.Add(histogram);
            return histogram;
        });
    }

    internal BenchOptions Options => _options;

    /// <summary>The pattern, twice over (any window of up to <see cref="PatternLength"/> bytes is contiguous).</summary>
    internal byte[] PatternArray => _pattern;

    /// <summary>Whether flows run on epoll loops (<see cref="EpollLoadLoop"/>, <see cref="UdpLoadLoop"/>) rather than async Socket calls.</summary>
    private bool UsesEpoll => Internal.EngineChoice.UsesEpoll(_options.Engine) && (_options.Udp || (!_options.Tls && !_options.Reconnect));

    /// <summary>Greeting bytes every new connection of the reconnect mode reads (what the first connection found).</summary>
    internal int ReconnectGreeting { get; private set; }

    internal ReadOnlySpan<byte> Pattern(long position, int length) => _pattern.AsSpan((int)(position % PatternLength), length);

    internal ReadOnlyMemory<byte> PatternMemory(long position, int length) => _pattern.AsMemory((int)(position % PatternLength), length);

    /// <summary>Where connection <paramref name="index"/> starts in the pattern (each its own place, as in echoload).</summary>
    internal long StartOffset(int index) => (long)(uint)HashCode.Combine(_options.Seed, index) % PatternLength;

    internal bool Measuring => _phase == RunPhase.Measuring;

    internal bool Stopping => _phase == RunPhase.Done;

    /// <summary>The calling thread's histogram (merged with the others at the end).</summary>
    internal LongHistogram ThreadHistogram => _histogram.Value!;

    internal void Record(long latencyTicks) => _histogram.Value!.RecordValue(Math.Max(latencyTicks, 0));

    public BenchProgress Snapshot()
    {
        string phase = _phase switch { RunPhase.Connecting => "connecting", RunPhase.Warmup => "warmup", RunPhase.Measuring => "measuring", _ => "done" };
        long messages = 0, mismatches = 0, errors = 0;
        int connected = 0;
        lock (_workers)
        {
            foreach (var worker in _workers)
            {
                messages += worker.MeasuredMessages;
                mismatches += worker.Mismatches;
                errors += worker.Failed ? 1 : 0;
                connected++;
            }
        }

        return new BenchProgress(phase, Stopwatch.GetElapsedTime(_start), messages, mismatches, errors + _connectFailures, connected);
    }

    /// <summary>Connects, warms up, measures for <see cref="BenchOptions.Duration"/>, and reports.</summary>
    public async Task<BenchResult> RunAsync(CancellationToken cancellationToken = default)
    {
        if (_options.MessageSize < 1 || _options.MessageSize > MaxMessageSize)
        {
            throw new ArgumentOutOfRangeException(nameof(BenchOptions.MessageSize));
        }

        bool epoll = UsesEpoll;
        await ConnectAllAsync(epoll, cancellationToken).ConfigureAwait(false);
        var (seconds, activeAtEnd, noEcho) = await LoadAsync(epoll, cancellationToken).ConfigureAwait(false);
        return Report(seconds, activeAtEnd, noEcho);
    }

    /// <summary>Opens every connection (or UDP flow); the first one alone, to find the address and the greeting.</summary>
    private async Task ConnectAllAsync(bool epoll, CancellationToken cancellationToken)
    {
        EndPoint[] candidates = _options.UnixPath is { } path
            ? [new UnixDomainSocketEndPoint(path)]
            : [.. (await SocketConnector.ResolveAsync(_options.Host, _options.Port, family: null).ConfigureAwait(false))
                .Select(address => new IPEndPoint(address, _options.Port))];
        EndPoint endPoint = candidates[0];

        // The first connection goes alone. It tries each address the name resolved to, in order, as nc does
        // ("localhost" is ::1 and 127.0.0.1; the server may listen on either), and the others use the one
        // that answered. Without --skip-greeting it also finds out what the server sends (waiting up to 300 ms
        // when it sends nothing) and the others read the same: detecting on every connection kept a server
        // without a greeting waiting 300 ms per connection on a few blocked threads (1,000 connections: 37 s
        // before the first message).
        int? skip = _options.SkipGreeting;
        bool greetingExpected = false;
        int first = 0;
        if (!_options.Udp)
        {
            LoadConnection.GreetingSeen? seen = null;
            for (int c = 0; c < candidates.Length && seen is null; c++)
            {
                seen = await ConnectOneAsync(0, skip, expectGreeting: false, candidates[c], countFailure: c == candidates.Length - 1).ConfigureAwait(false);
                if (seen is not null)
                {
                    endPoint = candidates[c];
                }
            }

            skip = seen switch
            {
                LoadConnection.GreetingSeen.None => 0,
                LoadConnection.GreetingSeen.EchoKit => Greeting.Bytes.Length,
                LoadConnection.GreetingSeen.Counted => skip,
                _ => null, // some other greeting, or no connection: detect on each
            };
            greetingExpected = seen is LoadConnection.GreetingSeen.Other; // then wait for it on each, however slow
            first = 1;
            if (_options.Reconnect && greetingExpected)
            {
                throw new ConnectFailedException("--reconnect needs a greeting of known length: give --skip-greeting N (the server sends one echokit does not know)",
                    _options.Host, _options.Port, SocketError.ProtocolNotSupported);
            }

            ReconnectGreeting = skip ?? 0;
        }

        using var gate = new SemaphoreSlim(200);
        var connecting = Enumerable.Range(first, _options.Connections - first).Select(async i =>
        {
            await gate.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                await ConnectOneAsync(i, skip, greetingExpected, endPoint, countFailure: true).ConfigureAwait(false);
            }
            finally
            {
                gate.Release();
            }
        }).ToArray();
        await Task.WhenAll(connecting).ConfigureAwait(false);

        // One connection (flow) of the load, added to the workers; a failure is counted if countFailure.
        // What the greeting detection saw, when it ran (null: the connection failed).
        async Task<LoadConnection.GreetingSeen?> ConnectOneAsync(int i, int? skipGreeting, bool expectGreeting, EndPoint target, bool countFailure)
        {
            try
            {
                ILoadFlow worker;
                LoadConnection.GreetingSeen seen = LoadConnection.GreetingSeen.Counted;
                if (_options.Udp)
                {
                    worker = epoll ? UdpLoadFlow.Open(this, i, target, UdpLoadLoop.SlotsPerFlow(_options)) : UdpLoadConnection.Open(this, i, target);
                }
                else
                {
                    // A thread of its own (LongRunning): the connect and the greeting read block, up to 300 ms
                    // when detecting; on the thread pool's few threads 200 connections to a server with a greeting
                    // of its own took 8 s to start.
                    var (socket, tls) = await Task.Factory.StartNew(() => LoadConnection.ConnectBlocking(_options, target, skipGreeting, expectGreeting, out seen),
                        cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default).ConfigureAwait(false);
                    if (_options.Reconnect)
                    {
                        tls?.Dispose(); // this first connection only proved the target; each cycle makes its own
                        socket.Dispose();
                        worker = new ReconnectFlow(this, i, target);
                    }
                    else
                    {
                        worker = epoll ? new EpollLoadConnection(this, socket, StartOffset(i), i) : LoadConnection.Open(this, i, socket, tls);
                    }
                }

                lock (_workers)
                {
                    _workers.Add(worker);
                }

                return seen;
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or IOException)
            {
                if (cancellationToken.IsCancellationRequested)
                {
                    throw;
                }

                if (countFailure)
                {
                    Interlocked.Increment(ref _connectFailures);
                    // The first failure is kept (connections fail on many threads at once: set once, atomically).
                    Interlocked.CompareExchange(ref _firstConnectError, (int)(e is SocketException se ? se.SocketErrorCode : SocketError.TimedOut), NoError);
                    if (e.InnerException is Client.TlsHandshakeException tls)
                    {
                        Interlocked.CompareExchange(ref _firstTlsError, tls, null);
                    }
                    else if (e is IOException { InnerException: null } io)
                    {
                        Interlocked.CompareExchange(ref _firstConnectMessage, io.Message, null); // said in words, not as an errno
                    }
                }

                return null;
            }
        }

        if (_workers.Count == 0)
        {
            string tried = candidates.Length == 1 ? EndPointText.Format(endPoint)
                : $"{_options.Host}:{_options.Port} ({string.Join(", ", candidates.Select(EndPointText.Format))})";
            throw new ConnectFailedException(
                $"no connection to {tried} succeeded: {(_firstTlsError is { } tlsError ? tlsError.Message : _firstConnectMessage ?? SocketErrorText.Describe(FirstConnectError ?? SocketError.ConnectionRefused))}",
                _options.Host, _options.Port, FirstConnectError ?? SocketError.ConnectionRefused, _firstTlsError);
        }

    }

    /// <summary>Warms up, measures, stops: how long was measured, what was still connected, and what had stopped echoing.</summary>
    private async Task<(double Seconds, int ActiveAtEnd, int NoEcho)> LoadAsync(bool epoll, CancellationToken cancellationToken)
    {
        _phase = RunPhase.Warmup;
        LoadEventLoop[] loops = [];
        Task[] runs;
        if (epoll)
        {
            // One loop per CPU this process may use, each with every n-th connection.
            int count = Math.Min(Environment.ProcessorCount, _workers.Count);
            loops = Enumerable.Range(0, count)
                .Select(l => _options.Udp
                    ? (LoadEventLoop)new UdpLoadLoop(l, this, _workers.Cast<UdpLoadFlow>().Where((_, i) => i % count == l).ToArray())
                    : new EpollLoadLoop(l, this, _workers.Cast<EpollLoadConnection>().Where((_, i) => i % count == l).ToArray()))
                .ToArray();
            runs = loops.Select(l => l.Exited).ToArray();
        }
        else
        {
            runs = _workers.Select(w => Task.Run(w.RunAsync, CancellationToken.None)).ToArray();
        }

        await WaitOrStopEarlyAsync(_options.Warmup, cancellationToken).ConfigureAwait(false);

        foreach (var histogram in _histograms)
        {
            histogram.Reset();
        }

        long windowStart = Stopwatch.GetTimestamp();
        _phase = RunPhase.Measuring;
        try
        {
            await WaitOrStopEarlyAsync(_options.Duration, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _phase = RunPhase.Done;
        }

        double seconds = Stopwatch.GetElapsedTime(windowStart).TotalSeconds;
        foreach (var loop in loops)
        {
            loop.Stop();
        }

        // The loops must be out of their system calls before the sockets are closed under them.
        await Task.WhenAll(loops.Select(l => l.Exited)).WaitAsync(TimeSpan.FromSeconds(10), CancellationToken.None).ConfigureAwait(false);
        int activeAtEnd = _workers.Count(w => !w.Failed);
        long end = Stopwatch.GetTimestamp();
        long echoTimeoutTicks = (long)(_options.EchoTimeout.TotalSeconds * Stopwatch.Frequency);
        int noEcho = _options.Udp
            ? _workers.Count(w => !w.Failed && w.Silent) // every datagram lost: counted as it happened, nothing hangs
            : _workers.Count(w => !w.Failed && w.InFlight > 0
                && (w.LastReceiveTimestamp == 0 || end - w.LastReceiveTimestamp > echoTimeoutTicks));
        foreach (var worker in _workers)
        {
            worker.Close();
        }

        await Task.WhenAll(runs).WaitAsync(TimeSpan.FromSeconds(10), CancellationToken.None).ConfigureAwait(false);

        return (seconds, activeAtEnd, noEcho);
    }

    /// <summary>The result, from every thread's histogram and every flow's counters.</summary>
    private BenchResult Report(double seconds, int activeAtEnd, int noEcho)
    {
        var merged = new LongHistogram(TimeSpan.FromHours(1).Ticks, 3);
        foreach (var histogram in _histograms)
        {
            merged.Add(histogram);
        }

        double Us(double percentile) => merged.TotalCount == 0 ? 0 : merged.GetValueAtPercentile(percentile) / 10.0;
        return new BenchResult
        {
            Connections = _options.Connections,
            MessageSize = _options.MessageSize,
            Depth = _options.Depth,
            Seconds = seconds,
            Messages = _workers.Sum(w => w.MeasuredMessages),
            P50Us = Us(50),
            P90Us = Us(90),
            P99Us = Us(99),
            P999Us = Us(99.9),
            MaxUs = merged.TotalCount == 0 ? 0 : merged.GetMaxValue() / 10.0,
            Errors = _workers.Count(w => w.Failed) + _connectFailures + _workers.Sum(w => w.Overruns),
            Mismatches = _workers.Sum(w => w.Mismatches),
            ConnectFailures = _connectFailures,
            ActiveAtEnd = activeAtEnd,
            NoEcho = noEcho,
            Unsolicited = _workers.Any(w => w.Unsolicited),
            Udp = _options.Udp,
            Lost = _workers.Sum(w => w.Lost),
            Late = _workers.Sum(w => w.Late),
            Reordered = _workers.Sum(w => w.Reordered),
            UdpTimeoutMs = _options.UdpTimeout.TotalMilliseconds,
        };
    }

    /// <summary>
    /// Ends the run early (Ctrl+C): what is left of the warm-up and of the measurement is skipped, and the
    /// result covers the time measured so far. Safe from any thread; only the first call counts.
    /// </summary>
    public void StopEarly() => _stopEarly.TrySetResult();

    /// <summary>Whether <see cref="StopEarly"/> was called.</summary>
    public bool StoppedEarly => _stopEarly.Task.IsCompleted;

    private async Task WaitOrStopEarlyAsync(TimeSpan duration, CancellationToken cancellationToken)
    {
        if (!StoppedEarly)
        {
            await Task.WhenAny(Task.Delay(duration, cancellationToken), _stopEarly.Task).ConfigureAwait(false);
        }

        cancellationToken.ThrowIfCancellationRequested();
    }

    /// <summary>
    /// A connection (or UDP flow) of the run failed: <paramref name="error"/> is why, null when the server
    /// closed it. The first one is kept for the report.
    /// </summary>
    internal void ReportDrop(SocketError? error)
    {
        lock (_workers)
        {
            if (!_dropped)
            {
                _dropped = true;
                FirstDropError = error;
            }
        }
    }

    /// <summary>Reconnect mode: a cycle failed; the first one's reason is kept for the report.</summary>
    internal void ReportCycleError(SocketError? error, string message)
    {
        lock (_workers)
        {
            FirstCycleError ??= error is { } e ? SocketErrorText.Describe(e) : message;
        }
    }

    /// <summary>Reconnect mode: why the first failed cycle failed (null: none failed).</summary>
    internal string? FirstCycleError { get; private set; }

    /// <summary>Why the first connection dropped during the run failed (null: the server closed it, or none did).</summary>
    public SocketError? FirstDropError { get; private set; }

    private const int NoError = int.MinValue;
    private int _firstConnectError = NoError;
    private Client.TlsHandshakeException? _firstTlsError;
    private string? _firstConnectMessage;

    /// <summary>The error of the first failed connect, for the report.</summary>
    public SocketError? FirstConnectError => Volatile.Read(ref _firstConnectError) is var e && e != NoError ? (SocketError)e : null;
}

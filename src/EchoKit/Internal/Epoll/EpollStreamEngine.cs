using Microsoft.Extensions.Logging;

namespace EchoKit.Internal.Epoll;

/// <summary>
/// The epoll engine: one <see cref="EpollLoop"/> per CPU (or <see cref="EchoServerOptions.EngineLoops"/>), each
/// with its own epoll set over all the listeners (EPOLLEXCLUSIVE), accepting, reading and sending itself.
/// Other threads reach a loop only through its command queue; the drain and the timeouts run on its tick.
/// </summary>
internal sealed class EpollStreamEngine(EchoServer server, ILogger logger, IReadOnlyList<StreamListener> listeners) : IStreamEngine
{
    private volatile EpollLoop[] _loops = [];
    private int _aborted;
    private Sockets.SocketStreamEngine? _wrapped; // connections whose byte stream a stage wraps: served by stream loops
    private readonly Lock _wrappedGate = new();

    public void Start()
    {
        var descriptors = listeners.Select(l => l.DescriptorForEpoll()).ToArray();
        var loops = new EpollLoop[listeners.Count == 0 ? 0 : LoopCount(server.Options)];
        for (int i = 0; i < loops.Length; i++)
        {
            loops[i] = new EpollLoop(i, server, this, logger, descriptors);
        }

        // Whole before any loop runs: the first connections, perhaps already queued, are spread too (LighterThan).
        _loops = loops;
        foreach (var loop in loops)
        {
            loop.Start();
        }
    }

    /// <summary>
    /// The loop with the fewest connections, counted as on its way there, if it has at least two fewer than
    /// <paramref name="accepting"/> and an eighth fewer; null when the loops are about level (or there is one).
    /// </summary>
    internal EpollLoop? LighterThan(EpollLoop accepting)
    {
        var loops = _loops;
        if (loops.Length < 2)
        {
            return null;
        }

        EpollLoop? lightest = null;
        int own = accepting.Load;
        int least = own - Math.Max(1, own / 4); // a margin, so that churn among level loops hands nothing over
        foreach (var loop in loops)
        {
            if (loop.Load < least)
            {
                (lightest, least) = (loop, loop.Load);
            }
        }

        lightest?.OnTheWay();
        return lightest;
    }

    /// <summary>Event loops: <see cref="EchoServerOptions.EngineLoops"/>, or one per CPU this process may use.</summary>
    public static int LoopCount(EchoServerOptions options) => options.EngineLoops > 0 ? options.EngineLoops : Environment.ProcessorCount;

    /// <summary>The descriptors each loop holds of its own: an epoll set and an eventfd.</summary>
    public const int DescriptorsPerLoop = 2;

    public void ApplyTimeouts(TimeoutPolicy policy)
    {
        foreach (var loop in _loops)
        {
            loop.ApplyTimeouts(policy);
        }

        lock (_wrappedGate)
        {
            _wrapped?.ApplyTimeouts(policy);
        }
    }

    public (long In, long Out) OpenBytes()
    {
        long bytesIn = 0, bytesOut = 0;
        foreach (var loop in _loops)
        {
            var (i, o) = loop.OpenBytes();
            bytesIn += i;
            bytesOut += o;
        }

        lock (_wrappedGate)
        {
            if (_wrapped is { } wrapped)
            {
                var (i, o) = wrapped.OpenBytes();
                bytesIn += i;
                bytesOut += o;
            }
        }

        return (bytesIn, bytesOut);
    }

    public Task StopAcceptingAsync() => Task.WhenAll(_loops.Select(l => l.StopAcceptingAsync()));

    public async Task<int> DrainAsync(long deadlineMs, long quietMs)
    {
        foreach (var loop in _loops)
        {
            loop.Drain(deadlineMs, quietMs);
        }

        var wrapped = _wrapped?.DrainAsync(deadlineMs, quietMs) ?? Task.FromResult(0);
        await Task.WhenAll(_loops.Select(l => l.Exited)).ConfigureAwait(false);
        return Volatile.Read(ref _aborted) + await wrapped.ConfigureAwait(false);
    }

    /// <summary>
    /// A loop hands over an admitted connection whose byte stream a stage wraps (TLS): the loops only read and
    /// send raw bytes, so it is served by a stream loop, with the same timeouts and drain.
    /// </summary>
    internal void HandOver(int fd, long id, System.Net.EndPoint? peer, IReadOnlyList<Stages.IStreamStage> streamStages)
    {
        Sockets.SocketStreamEngine engine;
        lock (_wrappedGate)
        {
            if (_wrapped is null)
            {
                _wrapped = new Sockets.SocketStreamEngine(server, []);
                _wrapped.Start(); // no listeners: only its heartbeat
            }

            engine = _wrapped;
        }

        var socket = new System.Net.Sockets.Socket(new System.Net.Sockets.SafeSocketHandle(fd, ownsHandle: true));
        engine.RunAdmitted(socket, id, peer, reportAccepted: false, streamStages);
    }

    /// <summary>A loop reset its connections at the drain's deadline; the server reports the sum once.</summary>
    internal void CountAborted(int count) => Interlocked.Add(ref _aborted, count);
}

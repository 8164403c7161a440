using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal.Epoll;

/// <summary>
/// One event loop of the epoll engine: a dedicated thread that waits in epoll_wait (edge-triggered;
/// under dense traffic it also reads busy connections directly, see <see cref="MakeHot"/>) and does
/// everything for its connections itself — accept4, recv into one shared buffer, send straight back —
/// with no hop to another thread, no per-operation object and nothing allocated per message.
/// It is the design of the C epoll baseline (../shared/bench/baselines/epoll.c), with every guarantee
/// of the Socket engine kept:
/// - backpressure: bytes a peer does not take are kept (one buffer's worth at most) and reading stops
///   until they are sent; the stdout sink, when full, also stops reading until it takes more;
/// - timeouts (idle, send) and the graceful drain are checked on the loop's own tick, not by timers;
/// - EMFILE/ENFILE at accept take the listeners out of the loop for a back-off (5 ms doubling to 1 s),
///   so a full descriptor table never makes the loop spin;
/// - a descriptor number reused by a new connection is told apart by a serial in the epoll token.
/// Other threads talk to the loop only through <see cref="Post"/> (a queue and an eventfd).
/// This file holds the loop's state and its turn (wait, dispatch); the rest is split by concern:
/// EpollLoop.Echo.cs (the receive → send path), .HotPolling.cs (busy connections read directly),
/// .Accept.cs (listeners, back-off, admission) and .Closing.cs (the tick and every way a connection ends).
/// </summary>
internal sealed unsafe partial class EpollLoop
{
    private const int MaxEvents = 256;
    private const int AcceptBatch = 64;
    private const int ReadRounds = 4;
    private const ulong ListenerFlag = 1UL << 63;
    private const ulong WakeToken = ulong.MaxValue;
    private static readonly TimeSpan HotQuiet = TimeSpan.FromMilliseconds(20);
    private const int HotSample = 4096; // sweep reads per verdict on whether polling pays
    private const long HotBackoffMinMs = 100;
    private const long HotBackoffMaxMs = 3200;

    private readonly EchoServer _server;
    private readonly ILogger _logger;
    private readonly (int Fd, bool Tcp, IReadOnlyList<Stages.IStreamStage> StreamStages)[] _listeners;
    private readonly bool[] _listenerReady;
    private bool _anyListenerReady;
    private readonly int _epoll;
    private readonly int _wake;
    private readonly byte[] _buffer;
    private readonly byte* _bufferPointer;
    private readonly ConcurrentQueue<Action> _commands = new();
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TimeoutPolicy _policy; // replaced on the loop's thread (ApplyTimeouts)
    private readonly HexDump? _dump;
    private readonly EpollStreamEngine _engine;
    private int _timeoutTickMs;
    private EpollConnection?[] _byFd = new EpollConnection?[1024];
    private int _count;
    private uint _nextSerial;
    private bool _listening;
    private bool _stopAccepting;
    private readonly AcceptBackoff _backoff;
    private long _acceptResumeMs;
    private bool _draining;
    private long _drainDeadlineMs;
    private long _quietMs;
    private long _nextTickMs;
    private bool _closed; // under the _commands lock: the eventfd is gone
    private long _nowMs = MonotonicClock.Milliseconds; // MonotonicClock.Milliseconds after the last epoll_wait
    private readonly long _busyPollTicks; // Stopwatch ticks; 0: never poll, sleep at once
    private readonly long _gapCapTicks;
    private long _gapTicks; // moving average of the time the loop waited for its next events
    private EpollConnection[] _hot = new EpollConnection[64]; // read directly while traffic is dense
    private int _hotCount;
    private readonly long _hotQuietTicks; // a hot connection silent this long goes back into epoll
    private long _lastTrafficTimestamp; // Stopwatch: the last bytes a sweep read or the last events
    private int _sweepHits; // reads of hot connections that found bytes, in the current sample
    private int _sweepMisses; // ... and that found none (EAGAIN)
    private long _polledReads; // all reads of hot connections that found bytes (logged at Debug when the loop ends)
    private long _eventReads; // reads that followed an epoll event
    private readonly int _index;
    private long _hotRetryMs; // MonotonicClock.Milliseconds before which no connection becomes hot
    private long _hotBackoffMs = HotBackoffMinMs;

    public EpollLoop(int index, EchoServer server, EpollStreamEngine engine, ILogger logger, (int Fd, bool Tcp, IReadOnlyList<Stages.IStreamStage> StreamStages)[] listeners)
    {
        _index = index;
        _server = server;
        _engine = engine;
        _logger = logger;
        _backoff = new AcceptBackoff(logger, server.CountAcceptBackoff);
        _listeners = listeners;
        _listenerReady = new bool[listeners.Length];
        var options = server.Options;
        SetTimeouts(new TimeoutPolicy(options.IdleTimeout, options.SendTimeout));
        _dump = options.HexDump;
        _busyPollTicks = (long)(options.BusyPoll.TotalSeconds * Stopwatch.Frequency);
        _gapCapTicks = 16 * _busyPollTicks;
        _gapTicks = _gapCapTicks; // start asleep: poll only once traffic has shown to be dense
        _hotQuietTicks = (long)(HotQuiet.TotalSeconds * Stopwatch.Frequency);
        _buffer = GC.AllocateUninitializedArray<byte>(options.LoopBufferSize, pinned: true);
        _bufferPointer = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffer));

        _epoll = Native.EpollCreate1(Native.EPOLL_CLOEXEC);
        if (_epoll < 0)
        {
            throw new SocketException(Native.LastError);
        }

        _wake = Native.EventFd(0, Native.EFD_CLOEXEC | Native.EFD_NONBLOCK);
        if (_wake < 0 || Control(Native.EPOLL_CTL_ADD, _wake, Native.EPOLLIN, WakeToken) < 0)
        {
            int errno = Native.LastError;
            Native.Close(_epoll);
            if (_wake >= 0)
            {
                Native.Close(_wake);
            }

            throw new SocketException(errno);
        }

        ListenerAdd();
    }

    /// <summary>Starts the loop's thread: from here on it accepts (once every loop of the engine exists, so that it can hand over).</summary>
    public void Start()
    {
        var thread = new Thread(Run) { IsBackground = true, Name = $"echokit-epoll-{_index}" };
        thread.UnsafeStart();
    }

    /// <summary>Completes when the loop has ended (after a drain) and its descriptors are closed.</summary>
    public Task Exited => _exited.Task;

    /// <summary>What this loop's connections have moved so far (read from another thread: a scrape may be a message behind).</summary>
    public (long In, long Out) OpenBytes()
    {
        long bytesIn = 0, bytesOut = 0;
        foreach (var c in _byFd)
        {
            if (c is not null)
            {
                bytesIn += c.BytesIn;
                bytesOut += c.BytesOut;
            }
        }

        return (bytesIn, bytesOut);
    }

    /// <summary>New timeouts (a reload), taken by the loop between events; the next tick comes by the new interval.</summary>
    public void ApplyTimeouts(TimeoutPolicy policy) => _ = Post(() =>
    {
        SetTimeouts(policy);
        if (_timeoutTickMs > 0)
        {
            _nextTickMs = Math.Min(_nextTickMs, MonotonicClock.Milliseconds + _timeoutTickMs);
        }
    });

    private void SetTimeouts(TimeoutPolicy policy)
    {
        _policy = policy;
        _timeoutTickMs = policy.Any ? (int)policy.CheckInterval.TotalMilliseconds : -1;
    }

    /// <summary>Runs <paramref name="command"/> on the loop's thread; false if the loop has ended (it never will).</summary>
    public bool Post(Action command)
    {
        // Under the gate, so that a late caller (a sink write completing after the loop ended) never
        // writes to the eventfd's number once it is closed and perhaps reused by another descriptor.
        lock (_commands)
        {
            if (_closed)
            {
                return false;
            }

            _commands.Enqueue(command);
            ulong one = 1;
            Native.Write(_wake, &one, sizeof(ulong));
            return true;
        }
    }

    /// <summary>Takes the listeners out of this loop for good; completes once the loop will not accept again.</summary>
    public Task StopAcceptingAsync()
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        bool posted = Post(() =>
        {
            // What the backlogs hold is served, not reset when the listeners close (the server has stopped new
            // handshakes from starting: StreamListener.HoldNewHandshakes).
            foreach (var listener in _listeners)
            {
                AcceptBacklog(listener.Fd, listener.Tcp, listener.StreamStages);
            }

            _stopAccepting = true;
            ListenerRemove();
            done.TrySetResult();
        });
        return posted ? done.Task : Task.CompletedTask; // an ended loop accepts nothing
    }

    /// <summary>
    /// Graceful stop: each connection gets our FIN once it has echoed everything and been quiet for
    /// <paramref name="quietMs"/>, and ends when the peer closes; at <paramref name="deadlineMs"/> what
    /// is left is reset. The loop then exits.
    /// </summary>
    public void Drain(long deadlineMs, long quietMs) => _ = Post(() =>
    {
        _draining = true;
        _drainDeadlineMs = deadlineMs;
        _quietMs = quietMs;
        _nextTickMs = 0;
    });

    private void Run()
    {
        var events = (Native.EpollEvent*)NativeMemory.Alloc(MaxEvents, (nuint)sizeof(Native.EpollEvent));
        try
        {
            while (!(_draining && _count == 0))
            {
                int n = Wait(events);
                if (n < 0)
                {
                    int errno = Native.LastError;
                    if (errno == Native.EINTR)
                    {
                        continue;
                    }

                    throw new SocketException(errno);
                }

                ProcessBatch(events, n);
            }
        }
        catch (Exception e)
        {
            // Not expected; never leave the server waiting for a loop that is gone.
            Log.LoopFailed(_logger, _index, e.Message); // not a connection's setup: the whole loop
        }
        finally
        {
            NativeMemory.Free(events);
            AbortAll(CloseReason.Error);
            Log.LoopReads(_logger, _index, _nextSerial, _polledReads, _polledReads + _eventReads);
            lock (_commands)
            {
                _closed = true;
                Native.Close(_epoll);
                Native.Close(_wake);
            }

            _exited.TrySetResult();
        }
    }

    /// <summary>
    /// Everything one epoll_wait returned, then the tick if one is due. A method of its own, never
    /// inlined: Run is entered once and loops forever, so its code stays as ReadyToRun compiled it,
    /// while a method called per batch is recompiled by the tiered JIT with the full optimizer.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ProcessBatch(Native.EpollEvent* events, int n)
    {
        _nowMs = MonotonicClock.Milliseconds; // one clock read per batch, not per message
        if (_hotCount > 0)
        {
            Sweep();
        }

        for (int i = 0; i < n; i++)
        {
            Dispatch(events[i].Data, events[i].Events);
        }

        if (_anyListenerReady)
        {
            AcceptReady();
        }

        if (_nowMs >= _nextTickMs)
        {
            Tick(_nowMs);
        }
    }

    /// <summary>
    /// The next events. While traffic is dense (the average wait is within the busy-poll budget), poll
    /// without sleeping for up to that budget first: the peer's next message then finds the loop awake,
    /// which spares the wake-up on both sides (measured on this rig with the C epoll server: +13 % msgs/s
    /// with 100 connections, -24 % p50 with one, at the same CPU per message under load). Otherwise, or
    /// when the budget runs out, sleep in epoll_wait. Sparse traffic and idle servers never poll.
    /// </summary>
    private int Wait(Native.EpollEvent* events)
    {
        if (_hotCount > 0)
        {
            int ready = Native.EpollPoll(_epoll, events, MaxEvents);
            long now = Stopwatch.GetTimestamp();
            if (ready > 0)
            {
                _lastTrafficTimestamp = now;
                return ready;
            }

            if (now - _lastTrafficTimestamp < _busyPollTicks)
            {
                return 0; // the caller sweeps the hot connections again
            }

            CoolAll(); // nothing for the whole budget: back to epoll, then wait as usual
        }

        if (_busyPollTicks == 0)
        {
            return Native.EpollWait(_epoll, events, MaxEvents, WaitMs());
        }

        long start = Stopwatch.GetTimestamp();
        int n = 0;
        if (_gapTicks <= _busyPollTicks)
        {
            while ((n = Native.EpollPoll(_epoll, events, MaxEvents)) <= 0 && Stopwatch.GetTimestamp() - start < _busyPollTicks)
            {
            }
        }

        if (n <= 0) // nothing yet (or EINTR): the blocking wait reports what matters
        {
            n = Native.EpollWait(_epoll, events, MaxEvents, WaitMs());
        }

        long gap = Math.Min(Stopwatch.GetTimestamp() - start, _gapCapTicks);
        _gapTicks += (gap - _gapTicks) / 4;
        return n;
    }

    /// <summary>How long epoll_wait may sleep: until the next tick when one is due, forever otherwise.</summary>
    private int WaitMs()
    {
        if (_nextTickMs == long.MaxValue)
        {
            return -1;
        }

        long wait = _nextTickMs - MonotonicClock.Milliseconds;
        return wait <= 0 ? 0 : (int)Math.Min(wait, int.MaxValue);
    }

    private void Dispatch(ulong token, uint events)
    {
        if (token == WakeToken)
        {
            ulong value;
            Native.Read(_wake, &value, sizeof(ulong));
            while (_commands.TryDequeue(out var command))
            {
                command();
            }

            return;
        }

        if ((token & ListenerFlag) != 0)
        {
            _listenerReady[(int)(uint)token] = true; // accepted after the batch's other events
            _anyListenerReady = true;
            return;
        }

        int fd = (int)(uint)token;
        var connection = fd < _byFd.Length ? _byFd[fd] : null;
        if (connection is null || connection.Token != token)
        {
            return; // closed earlier in this batch
        }

        if ((events & Native.EPOLLOUT) != 0 || (connection.PendingBytes > 0 && (events & (Native.EPOLLERR | Native.EPOLLHUP)) != 0))
        {
            OnWritable(connection);
        }
        else
        {
            OnReadable(connection, events); // EPOLLIN, or RDHUP/HUP/ERR: recv reports EOF or the error
            if (_busyPollTicks > 0 && _gapTicks <= _busyPollTicks && !_draining && _nowMs >= _hotRetryMs
                && _byFd[fd] == connection && connection.Events == EpollConnection.ReadEvents)
            {
                MakeHot(connection);
            }
        }
    }

    /// <summary>Registers the events the connection wants now; a connection that wants none is taken out of epoll.</summary>
    private void UpdateEvents(EpollConnection c)
    {
        if (c.HotIndex >= 0)
        {
            HotRemove(c); // its state changed (bytes kept, sink full, peer's FIN): epoll decides again
        }

        uint wanted = c.WantedEvents;
        if (wanted == c.Events)
        {
            return;
        }

        int op = wanted == 0 ? Native.EPOLL_CTL_DEL : c.Events == 0 ? Native.EPOLL_CTL_ADD : Native.EPOLL_CTL_MOD;
        if (Control(op, c.Fd, wanted, c.Token) < 0)
        {
            Fail(c, Native.LastError);
            return;
        }

        c.Events = wanted;
    }

    private int Control(int op, int fd, uint events, ulong token) => Native.EpollControl(_epoll, op, fd, events, token);
}

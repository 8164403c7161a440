using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
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
/// </summary>
internal sealed unsafe class EpollLoop
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
    private static readonly TimeSpan MinBackoff = TimeSpan.FromMilliseconds(5);
    private static readonly TimeSpan MaxBackoff = TimeSpan.FromSeconds(1);

    private readonly EchoServer _server;
    private readonly ILogger _logger;
    private readonly (int Fd, bool Tcp)[] _listeners;
    private readonly bool[] _listenerReady;
    private bool _anyListenerReady;
    private readonly int _epoll;
    private readonly int _wake;
    private readonly byte[] _buffer;
    private readonly byte* _bufferPointer;
    private readonly ConcurrentQueue<Action> _commands = new();
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly long _idleMs;
    private readonly long _sendMs;
    private readonly int _timeoutTickMs;
    private EpollConnection?[] _byFd = new EpollConnection?[1024];
    private int _count;
    private uint _nextSerial;
    private bool _listening;
    private bool _stopAccepting;
    private TimeSpan _backoff = MinBackoff;
    private long _acceptResumeTicks;
    private long _lastAcceptLogTicks = long.MinValue / 2;
    private long _suppressedAcceptLogs;
    private bool _draining;
    private long _drainDeadlineTicks;
    private long _quietMs;
    private long _nextTickTicks;
    private bool _closed; // under the _commands lock: the eventfd is gone
    private long _now = MonotonicClock.Milliseconds; // MonotonicClock.Milliseconds after the last epoll_wait
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

    public EpollLoop(int index, EchoServer server, ILogger logger, (int Fd, bool Tcp)[] listeners)
    {
        _index = index;
        _server = server;
        _logger = logger;
        _listeners = listeners;
        _listenerReady = new bool[listeners.Length];
        var options = server.Options;
        _idleMs = (long)options.IdleTimeout.TotalMilliseconds;
        _sendMs = (long)options.SendTimeout.TotalMilliseconds;
        _timeoutTickMs = _idleMs > 0 || _sendMs > 0
            ? (int)ConnectionHeartbeat.PickInterval(options.IdleTimeout, options.SendTimeout).TotalMilliseconds
            : -1;
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
        var thread = new Thread(Run) { IsBackground = true, Name = $"echokit-epoll-{index}" };
        thread.UnsafeStart();
    }

    /// <summary>Completes when the loop has ended (after a drain) and its descriptors are closed.</summary>
    public Task Exited => _exited.Task;

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
            _stopAccepting = true;
            ListenerRemove();
            done.TrySetResult();
        });
        return posted ? done.Task : Task.CompletedTask; // an ended loop accepts nothing
    }

    /// <summary>
    /// Graceful stop: each connection gets our FIN once it has echoed everything and been quiet for
    /// <paramref name="quietMs"/>, and ends when the peer closes; at <paramref name="deadlineTicks"/> what
    /// is left is reset. The loop then exits.
    /// </summary>
    public void Drain(long deadlineTicks, long quietMs) => _ = Post(() =>
    {
        _draining = true;
        _drainDeadlineTicks = deadlineTicks;
        _quietMs = quietMs;
        _nextTickTicks = 0;
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
            Log.SetupFailed(_logger, "event loop: " + e.Message);
        }
        finally
        {
            NativeMemory.Free(events);
            AbortAll(CloseReason.Error);
            Log.LoopReads(_logger, _index, _polledReads, _polledReads + _eventReads);
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
        _now = MonotonicClock.Milliseconds; // one clock read per batch, not per message
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

        if (_now >= _nextTickTicks)
        {
            Tick(_now);
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
        if (_nextTickTicks == long.MaxValue)
        {
            return -1;
        }

        long wait = _nextTickTicks - MonotonicClock.Milliseconds;
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
            if (_busyPollTicks > 0 && _gapTicks <= _busyPollTicks && !_draining && _now >= _hotRetryMs
                && _byFd[fd] == connection && connection.Events == EpollConnection.ReadEvents)
            {
                MakeHot(connection);
            }
        }
    }

    /// <summary>
    /// While traffic is dense (the loop is polling anyway, see <see cref="Wait"/>), a connection that has
    /// just been read leaves the epoll set and is read directly by every turn of the loop until it has
    /// been silent for <see cref="HotQuiet"/> or the whole loop for the busy-poll budget. A socket in no
    /// epoll set and with no reader asleep has no waiter, so the peer's send skips the wake-up path
    /// (ep_poll_callback and its interrupt-disabling lock, ~5 % of the load generator's CPU here): the
    /// peer's messages get cheaper, and so does ours (no epoll_wait to learn what recv tells anyway).
    /// Measured first on a copy of the C epoll server (bench/experiments/hot-poll).
    /// </summary>
    private void MakeHot(EpollConnection c)
    {
        if (Control(Native.EPOLL_CTL_DEL, c.Fd, 0, 0) < 0)
        {
            return; // stays in epoll
        }

        c.Events = 0;
        if (_hotCount == _hot.Length)
        {
            Array.Resize(ref _hot, _hot.Length * 2);
        }

        c.HotIndex = _hotCount;
        _hot[_hotCount++] = c;
        c.HotLastTimestamp = _lastTrafficTimestamp = Stopwatch.GetTimestamp();
    }

    private void HotRemove(EpollConnection c)
    {
        int i = c.HotIndex;
        var last = _hot[--_hotCount];
        _hot[i] = last;
        last.HotIndex = i;
        _hot[_hotCount] = null!;
        c.HotIndex = -1;
    }

    /// <summary>Back into epoll: ADD looks at the socket, so bytes that arrived meanwhile raise an event.</summary>
    private void Cool(EpollConnection c)
    {
        HotRemove(c);
        UpdateEvents(c);
    }

    private void CoolAll()
    {
        while (_hotCount > 0)
        {
            Cool(_hot[_hotCount - 1]);
        }
    }

    /// <summary>One read of every hot connection; each may close, or return to epoll (bytes kept, sink full, quiet).</summary>
    private void Sweep()
    {
        long now = Stopwatch.GetTimestamp();
        bool traffic = false;
        for (int i = 0; i < _hotCount;)
        {
            var c = _hot[i];
            nint n = Native.Recv(c.Fd, _bufferPointer, (nuint)_buffer.Length, 0);
            if (n > 0)
            {
                c.HotLastTimestamp = now;
                traffic = true;
                _sweepHits++;
                _polledReads++;
                Echo(c, (int)n);
            }
            else if (n == 0 || (n != -Native.EAGAIN && n != -Native.EINTR))
            {
                OnReadEnd(c, n);
            }
            else
            {
                _sweepMisses++;
                if (now - c.HotLastTimestamp > _hotQuietTicks)
                {
                    Cool(c);
                }
            }

            if (i < _hotCount && _hot[i] == c)
            {
                i++;
            }
        }

        if (traffic)
        {
            _lastTrafficTimestamp = Stopwatch.GetTimestamp(); // the budget counts from the sweep's end: a long sweep is no silence
        }

        if (_sweepHits + _sweepMisses >= HotSample)
        {
            JudgeSweeps();
        }
    }

    /// <summary>
    /// Polling pays only while most reads find bytes: each read that finds none is a system call the
    /// server pays for, and where both sides are saturated that costs more than the wake-ups it spares
    /// (1,000 ping-pong connections: 39 % of reads empty, 5 % fewer messages). More than one empty read
    /// in five: back to epoll, and no polling for a back-off (100 ms doubling to 3.2 s while it keeps failing).
    /// </summary>
    private void JudgeSweeps()
    {
        if (_sweepMisses * 4 > _sweepHits)
        {
            CoolAll();
            _hotRetryMs = _now + _hotBackoffMs;
            _hotBackoffMs = Math.Min(_hotBackoffMs * 2, HotBackoffMaxMs);
        }
        else
        {
            _hotBackoffMs = HotBackoffMinMs;
        }

        _sweepHits = _sweepMisses = 0;
    }

    /// <summary>
    /// Reads and echoes. Reading is edge-triggered (a level-triggered socket is polled again by the next
    /// epoll_wait after every message, measured at 2 % of the C server's time): a read that comes back
    /// short has emptied the socket, and bytes arriving later raise a new edge. Two cases need more:
    /// a full read may have left bytes behind that nothing will announce, so read again, up to
    /// <see cref="ReadRounds"/> times, then re-arm the socket (EPOLL_CTL_MOD looks at it again) so that
    /// other connections get their turn; and when the event says the peer has shut down (RDHUP/HUP/ERR),
    /// its FIN came with the bytes and a short read stops just before it: read on until recv says so.
    /// </summary>
    private void OnReadable(EpollConnection c, uint events)
    {
        bool toTheEnd = (events & (Native.EPOLLRDHUP | Native.EPOLLHUP | Native.EPOLLERR)) != 0;
        for (int round = 1; ; round++)
        {
            nint n = Native.Recv(c.Fd, _bufferPointer, (nuint)_buffer.Length, 0);
            if (n <= 0)
            {
                OnReadEnd(c, n);
                return;
            }

            _eventReads++;
            if (!Echo(c, (int)n) || (n < _buffer.Length && !toTheEnd) || c.Events != EpollConnection.ReadEvents)
            {
                return; // closed, emptied, or no longer reading (bytes kept, sink full): reading again re-arms it
            }

            if (round == ReadRounds)
            {
                if (Control(Native.EPOLL_CTL_MOD, c.Fd, c.Events, c.Token) < 0)
                {
                    Fail(c, Native.LastError);
                }

                return;
            }
        }
    }

    /// <summary>Echoes <paramref name="n"/> bytes just read into the loop's buffer; false if the connection ended.</summary>
    private bool Echo(EpollConnection c, int n)
    {
        c.LastReceiveTicks = _now;
        c.BytesIn += n;
        if (c.FinSent)
        {
            return true; // we said goodbye at shutdown; drop what still arrives
        }

        if (!WriteOrKeep(c, _bufferPointer, n))
        {
            return false;
        }

        if (_server.PayloadSink is not { } sink)
        {
            return true;
        }

        var written = sink.WriteAsync(c.Id, _buffer.AsMemory(0, n)); // the sink copies before it returns
        if (!written.IsCompletedSuccessfully)
        {
            PauseForSink(c, written);
        }

        return true;
    }

    /// <summary>A read that returned 0 (the peer's FIN) or failed.</summary>
    private void OnReadEnd(EpollConnection c, nint n)
    {
        if (n == 0)
        {
            c.PeerEof = true;
            if (c.PendingBytes == 0)
            {
                Close(c, c.FinSent ? CloseReason.ServerShutdown : CloseReason.PeerClosed, Ending.SendFin);
            }
            else
            {
                UpdateEvents(c); // finish sending, then close
            }
        }
        else
        {
            int errno = (int)-n;
            if (errno != Native.EAGAIN && errno != Native.EINTR)
            {
                Fail(c, errno);
            }
        }
    }

    /// <summary>
    /// The sink is full: stop reading until it has taken this chunk. A method of its own, so that the
    /// closure is allocated only here and not on every read (C# allocates it where its variables' scope begins).
    /// </summary>
    private void PauseForSink(EpollConnection c, ValueTask written)
    {
        c.SinkBlocked = true;
        UpdateEvents(c);
        int fd = c.Fd;
        uint serial = c.Serial;
        written.AsTask().ContinueWith(_ => Post(() => ResumeAfterSink(fd, serial)), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
    }

    private void ResumeAfterSink(int fd, uint serial)
    {
        var c = fd < _byFd.Length ? _byFd[fd] : null;
        if (c is not null && c.Serial == serial)
        {
            c.SinkBlocked = false;
            UpdateEvents(c);
        }
    }

    /// <summary>Sends all it can now; what the peer does not take is kept and reading stops. False if the connection ended.</summary>
    private bool WriteOrKeep(EpollConnection c, byte* data, int length)
    {
        int sent = SendUntilFull(c, data, length);
        if (sent < 0)
        {
            return false;
        }

        if (sent < length)
        {
            int rest = length - sent;
            var pending = ArrayPool<byte>.Shared.Rent(Math.Max(rest, 4096));
            new ReadOnlySpan<byte>(data + sent, rest).CopyTo(pending);
            c.Pending = pending;
            c.PendingOffset = 0;
            c.PendingLength = rest;
            c.SendBlockedTicks = _now;
            UpdateEvents(c);
        }

        return true;
    }

    /// <summary>Sends until everything is sent or the kernel's buffer is full: the bytes sent, or -1 when the connection failed (it is closed then).</summary>
    private int SendUntilFull(EpollConnection c, byte* data, int length)
    {
        int total = 0;
        while (total < length)
        {
            nint sent = Native.Send(c.Fd, data + total, (nuint)(length - total), Native.MSG_NOSIGNAL);
            if (sent > 0)
            {
                c.BytesOut += sent;
                total += (int)sent;
                continue;
            }

            int errno = (int)-sent;
            if (errno == Native.EINTR)
            {
                continue;
            }

            if (errno != Native.EAGAIN)
            {
                Fail(c, errno);
                return -1;
            }

            break;
        }

        return total;
    }

    private void OnWritable(EpollConnection c)
    {
        int sent;
        fixed (byte* pending = c.Pending)
        {
            sent = SendUntilFull(c, pending + c.PendingOffset, c.PendingBytes);
        }

        if (sent < 0)
        {
            return;
        }

        if (sent > 0)
        {
            c.PendingOffset += sent;
            c.SendBlockedTicks = _now; // progress: the send timeout counts from here
        }

        if (c.PendingBytes > 0)
        {
            return; // still full: EPOLLOUT stays armed
        }

        ReleasePending(c);
        if (c.PeerEof)
        {
            Close(c, c.FinSent ? CloseReason.ServerShutdown : CloseReason.PeerClosed, Ending.SendFin);
            return;
        }

        UpdateEvents(c);
    }

    private static void ReleasePending(EpollConnection c)
    {
        if (c.Pending is { } pending)
        {
            ArrayPool<byte>.Shared.Return(pending);
        }

        c.Pending = null;
        c.PendingOffset = c.PendingLength = 0;
        c.SendBlockedTicks = 0;
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

    private void ListenerAdd()
    {
        if (_listening || _stopAccepting)
        {
            return;
        }

        for (int i = 0; i < _listeners.Length; i++)
        {
            // EPOLLEXCLUSIVE: one loop wakes per new connection, not every loop.
            Control(Native.EPOLL_CTL_ADD, _listeners[i].Fd, Native.EPOLLIN | Native.EPOLLEXCLUSIVE, ListenerFlag | (uint)i);
        }

        _listening = true;
    }

    private void ListenerRemove()
    {
        if (!_listening)
        {
            return;
        }

        foreach (var listener in _listeners)
        {
            Control(Native.EPOLL_CTL_DEL, listener.Fd, 0, 0);
        }

        _listening = false;
    }

    /// <summary>
    /// Accepts on the listeners that were ready in this batch, after its other events: connections whose
    /// peers have gone are closed first, so a client arriving behind a storm is counted against the
    /// connections that are really left, and not told "server busy" by ones already closed.
    /// </summary>
    private void AcceptReady()
    {
        _anyListenerReady = false;
        for (int i = 0; i < _listeners.Length; i++)
        {
            if (_listenerReady[i])
            {
                _listenerReady[i] = false;
                AcceptBatchFrom(_listeners[i].Fd, _listeners[i].Tcp);
            }
        }
    }

    private void AcceptBatchFrom(int listenFd, bool tcp)
    {
        byte* address = stackalloc byte[128];
        for (int i = 0; i < AcceptBatch && _listening; i++)
        {
            uint length = 128;
            int fd = Native.Accept4(listenFd, address, &length, Native.SOCK_NONBLOCK | Native.SOCK_CLOEXEC);
            if (fd < 0)
            {
                int errno = Native.LastError;
                if (errno == Native.EAGAIN)
                {
                    return;
                }

                if (errno is Native.EMFILE or Native.ENFILE or Native.ENOBUFS or Native.ENOMEM)
                {
                    BackOffAccepting(errno);
                    return;
                }

                continue; // that one connection died in the backlog (ECONNABORTED, EPROTO, ...): the listener is fine
            }

            _backoff = MinBackoff;
            Admit(fd, tcp, PeerOf(address, length));
        }
    }

    private void BackOffAccepting(int errno)
    {
        if (errno is Native.EMFILE or Native.ENFILE)
        {
            _server.OnDescriptorsExhausted();
        }

        long now = MonotonicClock.Milliseconds;
        if (now - _lastAcceptLogTicks >= 1000)
        {
            Log.AcceptFailed(_logger, SocketErrorText.Describe(Native.ToSocketError(errno)), (long)_backoff.TotalMilliseconds, _suppressedAcceptLogs);
            _lastAcceptLogTicks = now;
            _suppressedAcceptLogs = 0;
        }
        else
        {
            _suppressedAcceptLogs++;
        }

        ListenerRemove();
        _acceptResumeTicks = now + (long)_backoff.TotalMilliseconds;
        _backoff = _backoff * 2 > MaxBackoff ? MaxBackoff : _backoff * 2;
        _nextTickTicks = Math.Min(_nextTickTicks, _acceptResumeTicks);
    }

    private void Admit(int fd, bool tcp, EndPoint? peer)
    {
        switch (_server.Admit(fd, out long id))
        {
            case EchoServer.Admission.Busy:
                fixed (byte* line = _server.BusyLine())
                {
                    Native.Send(fd, line, (nuint)_server.BusyLine().Length, Native.MSG_NOSIGNAL);
                }

                Native.Shutdown(fd, Native.SHUT_WR);
                Native.Close(fd);
                _server.ReportBusy(peer);
                return;
            case EchoServer.Admission.Stopping:
                Native.Close(fd);
                return;
        }

        if (tcp && _server.Options.NoDelay)
        {
            Native.SetNoDelay(fd);
        }

        if (fd >= _byFd.Length)
        {
            Array.Resize(ref _byFd, Math.Max(fd + 1, _byFd.Length * 2));
        }

        var c = new EpollConnection(fd, ++_nextSerial, id, peer, _now);
        _byFd[fd] = c;
        _count++;
        _server.ReportAccepted(id, peer);
        if (_server.Options.SendGreeting)
        {
            fixed (byte* greeting = Greeting.Bytes.Span)
            {
                if (!WriteOrKeep(c, greeting, Greeting.Bytes.Length))
                {
                    return;
                }
            }
        }

        UpdateEvents(c);
    }

    /// <summary>What .NET's RemoteEndPoint gives for an unbound Unix client: an address of just sa_family.</summary>
    private static readonly EndPoint UnnamedUnixPeer = new UnixDomainSocketEndPoint("/").Create(new SocketAddress(AddressFamily.Unix, 2));

    private static EndPoint? PeerOf(byte* address, uint length)
    {
        if (length < 2)
        {
            return null;
        }

        var family = *(ushort*)address switch
        {
            2 => AddressFamily.InterNetwork,    // AF_INET
            10 => AddressFamily.InterNetworkV6, // AF_INET6
            1 => AddressFamily.Unix,
            _ => AddressFamily.Unknown,
        };
        if (family == AddressFamily.Unix)
        {
            return UnnamedUnixPeer; // a client's Unix socket is almost never bound to a name
        }

        if (family == AddressFamily.Unknown)
        {
            return null;
        }

        var socketAddress = new SocketAddress(family, (int)length);
        new ReadOnlySpan<byte>(address, (int)length).CopyTo(socketAddress.Buffer.Span);
        var template = family == AddressFamily.InterNetwork ? new IPEndPoint(IPAddress.Any, 0) : new IPEndPoint(IPAddress.IPv6Any, 0);
        return EndPointText.Normalize(template.Create(socketAddress));
    }

    /// <summary>Timeouts, the drain and the accept back-off, every tick (only when one of them is in force).</summary>
    private void Tick(long now)
    {
        if (!_listening && !_stopAccepting && now >= _acceptResumeTicks)
        {
            ListenerAdd();
        }

        if (_idleMs > 0 || _sendMs > 0 || _draining)
        {
            bool deadlinePassed = _draining && now >= _drainDeadlineTicks;
            if (deadlinePassed && _count > 0)
            {
                _server.ReportAbortingAtShutdown(_count);
            }

            var all = _byFd;
            for (int fd = 0; fd < all.Length; fd++)
            {
                if (all[fd] is not { } c)
                {
                    continue;
                }

                if (deadlinePassed)
                {
                    Close(c, CloseReason.ShutdownTimeout, Ending.Reset);
                }
                else if (_sendMs > 0 && c.SendBlockedTicks != 0 && now - c.SendBlockedTicks >= _sendMs)
                {
                    Close(c, CloseReason.SendTimeout, Ending.Reset);
                }
                else if (_idleMs > 0 && now - c.LastReceiveTicks >= _idleMs)
                {
                    Close(c, CloseReason.IdleTimeout, Ending.ShutdownBoth);
                }
                else if (_draining && !c.FinSent && c.PendingBytes == 0 && !c.SinkBlocked && now - c.LastReceiveTicks >= _quietMs)
                {
                    // Echoed what it had and gone quiet: say goodbye; the peer's close ends it.
                    c.FinSent = true;
                    Native.Shutdown(c.Fd, Native.SHUT_WR);
                }
            }
        }

        long next = long.MaxValue;
        if (_draining)
        {
            next = now + 10;
        }
        else if (_timeoutTickMs > 0)
        {
            next = now + _timeoutTickMs;
        }

        if (!_listening && !_stopAccepting)
        {
            next = Math.Min(next, _acceptResumeTicks);
        }

        _nextTickTicks = next;
    }

    private enum Ending
    {
        /// <summary>shutdown(SHUT_WR) then close: an orderly FIN.</summary>
        SendFin,
        /// <summary>shutdown(SHUT_RDWR) then close.</summary>
        ShutdownBoth,
        /// <summary>SO_LINGER 0 then close: an RST, unsent bytes discarded.</summary>
        Reset,
        /// <summary>close only (the socket already failed).</summary>
        CloseOnly,
    }

    private void Fail(EpollConnection c, int errno)
    {
        c.Error = Native.ToSocketError(errno);
        Close(c, SocketErrorText.IsPeerReset(c.Error) ? CloseReason.PeerReset : CloseReason.Error, Ending.CloseOnly);
    }

    private void Close(EpollConnection c, CloseReason reason, Ending ending)
    {
        if (_byFd[c.Fd] != c)
        {
            return; // already closed
        }

        _byFd[c.Fd] = null;
        _count--;
        if (c.HotIndex >= 0)
        {
            HotRemove(c);
        }

        switch (ending)
        {
            case Ending.SendFin:
                Native.Shutdown(c.Fd, Native.SHUT_WR);
                break;
            case Ending.ShutdownBoth:
                Native.Shutdown(c.Fd, Native.SHUT_RDWR);
                break;
            case Ending.Reset:
                Native.SetAbortiveClose(c.Fd);
                break;
        }

        Native.Close(c.Fd); // also takes it out of the epoll set
        ReleasePending(c);
        _server.ReportClosed(new ClosedConnection(c.Id, c.Peer, reason, c.Error, c.BytesIn, c.BytesOut, Stopwatch.GetElapsedTime(c.StartTimestamp)));
    }

    private void AbortAll(CloseReason reason)
    {
        for (int fd = 0; fd < _byFd.Length; fd++)
        {
            if (_byFd[fd] is { } c)
            {
                Close(c, reason, Ending.Reset);
            }
        }
    }
}

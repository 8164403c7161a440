using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using EchoKit.Internal.Epoll;

namespace EchoKit.Bench;

/// <summary>
/// The load generator's epoll engine, built like echoload (one thread, epoll, non-blocking sockets):
/// each loop owns some connections and does every send and receive itself, so a message costs two
/// system calls and no thread hop. Open loop schedules with a nanosecond epoll timeout (epoll_pwait2),
/// falling back to milliseconds where the kernel lacks it. Linux x86-64 only, like the server's engine.
/// </summary>
internal sealed unsafe class EpollLoadLoop
{
    private const int MaxEvents = 256;
    private const ulong WakeToken = ulong.MaxValue;

    private readonly LoadGenerator _owner;
    private readonly EpollLoadConnection[] _connections;
    private readonly int _size;
    private readonly int _depth;
    private readonly double _interval; // open loop: Stopwatch ticks between one connection's messages
    private readonly bool _openLoop;
    private readonly byte[] _buffer;
    private readonly int _epoll;
    private readonly int _wake;
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly PriorityQueue<EpollLoadConnection, double> _schedule = new();
    private volatile bool _stop;
    private bool _closed; // under the _exited lock: the eventfd is gone
    private HdrHistogram.LongHistogram? _histogram;
    private bool _nanosecondTimeouts = true;

    public EpollLoadLoop(int index, LoadGenerator owner, EpollLoadConnection[] connections)
    {
        _owner = owner;
        _connections = connections;
        var options = owner.Options;
        _size = options.MessageSize;
        _depth = options.Depth;
        _openLoop = options.Rate is not null;
        _interval = _openLoop ? Stopwatch.Frequency / (options.Rate!.Value / options.Connections) : 0;
        _buffer = GC.AllocateUninitializedArray<byte>(Math.Max(256 * 1024, _size), pinned: true);
        _epoll = Native.EpollCreate1(Native.EPOLL_CLOEXEC);
        if (_epoll < 0)
        {
            throw new SocketException(Native.LastError);
        }

        _wake = Native.EventFd(0, Native.EFD_CLOEXEC | Native.EFD_NONBLOCK);
        if (_wake < 0 || Control(Native.EPOLL_CTL_ADD, _wake, Native.EPOLLIN, WakeToken) < 0)
        {
            int errno = Native.LastError; // read before close() can change it
            if (_wake >= 0)
            {
                Native.Close(_wake);
            }

            Native.Close(_epoll); // leaked before when the eventfd failed
            throw new SocketException(errno);
        }
        var thread = new Thread(Run) { IsBackground = true, Name = $"echokit-bench-{index}" };
        thread.UnsafeStart();
    }

    /// <summary>Completes when the loop has stopped; its connections are then safe to close.</summary>
    public Task Exited => _exited.Task;

    public void Stop()
    {
        _stop = true;
        lock (_exited)
        {
            if (!_closed) // never write to the eventfd's number once it is closed (and perhaps reused)
            {
                ulong one = 1;
                Native.Write(_wake, &one, sizeof(ulong));
            }
        }
    }

    private void Run()
    {
        var events = (Native.EpollEvent*)NativeMemory.Alloc(MaxEvents, (nuint)sizeof(Native.EpollEvent));
        try
        {
            long start = Stopwatch.GetTimestamp();
            foreach (var c in _connections)
            {
                if (Control(Native.EPOLL_CTL_ADD, c.Fd, Native.EPOLLIN, (ulong)c.Index) < 0)
                {
                    Fail(c);
                    continue;
                }

                c.Events = Native.EPOLLIN;
                if (_openLoop)
                {
                    // Spread the connections' schedules over one interval, as one total rate.
                    c.NextDue = start + _interval * c.Index / Math.Max(1, _owner.Options.Connections);
                    _schedule.Enqueue(c, c.NextDue);
                }
                else
                {
                    Queue(c, _depth, start);
                    Flush(c);
                }
            }

            var lookup = new EpollLoadConnection?[_connections.Length == 0 ? 0 : _connections.Max(c => c.Index) + 1];
            foreach (var c in _connections)
            {
                lookup[c.Index] = c;
            }

            while (!_stop && !_owner.Stopping)
            {
                ProcessBatch(events, Wait(events), lookup);
            }
        }
        catch (Exception e) when (e is SocketException or InvalidOperationException)
        {
            foreach (var c in _connections)
            {
                Fail(c);
            }
        }
        finally
        {
            NativeMemory.Free(events);
            lock (_exited)
            {
                _closed = true;
                Native.Close(_epoll);
                Native.Close(_wake);
            }

            _exited.TrySetResult();
        }
    }

    /// <summary>One epoll_wait's events, then what is due. Never inlined, so that the tiered JIT recompiles it (Run stays as ReadyToRun compiled it).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ProcessBatch(Native.EpollEvent* events, int n, EpollLoadConnection?[] lookup)
    {
        for (int i = 0; i < n; i++)
        {
            ulong token = events[i].Data;
            if (token == WakeToken)
            {
                ulong value;
                Native.Read(_wake, &value, sizeof(ulong));
                continue;
            }

            var c = lookup[(int)token];
            if (c is null || c.Done)
            {
                continue;
            }

            uint happened = events[i].Events;
            if ((happened & Native.EPOLLOUT) != 0)
            {
                Flush(c);
            }

            if (!c.Done && (happened & (Native.EPOLLIN | Native.EPOLLERR | Native.EPOLLHUP)) != 0)
            {
                OnReadable(c);
            }
        }

        if (_openLoop)
        {
            SendDue(Stopwatch.GetTimestamp());
        }
    }

    private int Wait(Native.EpollEvent* events)
    {
        int n;
        if (!_openLoop || _schedule.Count == 0)
        {
            n = Native.EpollWait(_epoll, events, MaxEvents, -1);
        }
        else
        {
            _schedule.TryPeek(out _, out double due);
            double waitTicks = due - Stopwatch.GetTimestamp();
            if (waitTicks <= 0)
            {
                n = Native.EpollPoll(_epoll, events, MaxEvents);
                if (n < 0)
                {
                    return Failed(-n);
                }
            }
            else if (_nanosecondTimeouts)
            {
                long ns = (long)(waitTicks * 1e9 / Stopwatch.Frequency);
                var timeout = new Native.Timespec { Seconds = ns / 1_000_000_000, Nanoseconds = ns % 1_000_000_000 };
                try
                {
                    n = Native.EpollPwait2(_epoll, events, MaxEvents, &timeout, null);
                    if (n < 0 && Native.LastError == Native.ENOSYS)
                    {
                        _nanosecondTimeouts = false;
                        n = 0;
                    }
                }
                catch (EntryPointNotFoundException)
                {
                    _nanosecondTimeouts = false; // glibc before 2.35
                    n = 0;
                }
            }
            else
            {
                n = Native.EpollWait(_epoll, events, MaxEvents, (int)Math.Ceiling(waitTicks * 1000 / Stopwatch.Frequency));
            }
        }

        return n < 0 ? Failed(Native.LastError) : n;
    }

    /// <summary>A wait that failed: none ready after EINTR, any other errno ends the loop.</summary>
    private static int Failed(int errno) => errno == Native.EINTR ? 0 : throw new SocketException(errno);

    /// <summary>Queues <paramref name="count"/> messages stamped <paramref name="timestamp"/> (their bytes go out in <see cref="Flush"/>).</summary>
    private void Queue(EpollLoadConnection c, int count, long timestamp)
    {
        c.Ledger.Sent(count, timestamp);
        c.Unsent += (long)count * _size;
    }

    /// <summary>Sends queued pattern bytes until done or the kernel is full (then EPOLLOUT is armed).</summary>
    private void Flush(EpollLoadConnection c)
    {
        fixed (byte* pattern = _owner.PatternArray)
        {
            while (c.Unsent > 0)
            {
                int chunk = (int)Math.Min(c.Unsent, LoadGenerator.PatternLength);
                nint sent = Native.Send(c.Fd, pattern + (c.SendPosition % LoadGenerator.PatternLength), (nuint)chunk, Native.MSG_NOSIGNAL);
                if (sent > 0)
                {
                    c.SendPosition += sent;
                    c.Unsent -= sent;
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
                    return;
                }

                break;
            }
        }

        SetEvents(c, c.Unsent > 0 ? Native.EPOLLIN | Native.EPOLLOUT : Native.EPOLLIN);
    }

    /// <summary>Reads while the buffer fills (up to four times, as echoload does), checking and completing messages.</summary>
    private void OnReadable(EpollLoadConnection c)
    {
        for (int round = 0; round < 4 && !c.Done; round++)
        {
            nint n = Native.Recv(c.Fd, (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_buffer)), (nuint)_buffer.Length, 0);
            if (n <= 0)
            {
                if (-n is Native.EAGAIN or Native.EINTR)
                {
                    return;
                }

                Fail(c, (int)-n); // closed (0) or reset by the server
                return;
            }

            OnData(c, (int)n);
            if (n < _buffer.Length)
            {
                return;
            }
        }
    }

    private void OnData(EpollLoadConnection c, int n)
    {
        long now = Stopwatch.GetTimestamp();
        var histogram = _owner.Measuring ? (_histogram ??= _owner.ThreadHistogram) : null; // this loop thread's own
        int completed = c.Ledger.Received(_buffer.AsSpan(0, n), _owner.Pattern(c.Ledger.ReceivePosition, n), now, histogram);
        if (!_openLoop && completed > 0)
        {
            Queue(c, completed, now);
            Flush(c);
        }
    }

    /// <summary>Open loop: every connection whose messages are due sends them now, each stamped with its scheduled time.</summary>
    private void SendDue(long now)
    {
        while (_schedule.TryPeek(out var c, out double due) && due <= now)
        {
            _schedule.Dequeue();
            if (c.Done)
            {
                continue;
            }

            int count = 0;
            double first = c.NextDue;
            while (c.NextDue <= now && count < 4096)
            {
                count++;
                c.NextDue += _interval;
            }

            if (!c.Ledger.HasRoomFor(count))
            {
                c.Overruns++; // the server is too far behind: stop adding to the backlog
                c.NextDue = now + _interval;
            }
            else
            {
                c.Ledger.Scheduled(count, first, _interval);

                c.Unsent += (long)count * _size;
                Flush(c);
            }

            if (!c.Done)
            {
                _schedule.Enqueue(c, c.NextDue);
            }
        }
    }

    private void SetEvents(EpollLoadConnection c, uint wanted)
    {
        if (c.Done || wanted == c.Events)
        {
            return;
        }

        if (Control(Native.EPOLL_CTL_MOD, c.Fd, wanted, (ulong)c.Index) < 0)
        {
            Fail(c);
            return;
        }

        c.Events = wanted;
    }

    /// <summary>Ends a connection; <paramref name="errno"/> is why (0: the server closed it), reported unless the run is ending.</summary>
    private void Fail(EpollLoadConnection c, int errno = 0)
    {
        if (c.Done)
        {
            return;
        }

        c.Done = true;
        c.Failed = !_owner.Stopping;
        if (c.Failed)
        {
            _owner.ReportDrop(errno == 0 ? null : Native.ToSocketError(errno));
        }

        Control(Native.EPOLL_CTL_DEL, c.Fd, 0, 0);
    }

    private int Control(int op, int fd, uint events, ulong token) => Native.EpollControl(_epoll, op, fd, events, token);
}

using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using EchoKit.Internal.Epoll;

namespace EchoKit.Bench;

/// <summary>
/// The load generator's TCP (and Unix stream) loop: each loop owns some connections and does every send and
/// receive itself, so a message costs two system calls and no thread hop. Open loop schedules each
/// connection's messages on the loop's nanosecond deadline (<see cref="LoadEventLoop"/>).
/// </summary>
internal sealed unsafe class EpollLoadLoop : LoadEventLoop
{
    private readonly EpollLoadConnection[] _connections;
    private readonly EpollLoadConnection?[] _lookup;
    private readonly int _size;
    private readonly int _depth;
    private readonly double _interval; // open loop: Stopwatch ticks between one connection's messages
    private readonly bool _openLoop;
    private readonly byte[] _buffer;
    private readonly PriorityQueue<EpollLoadConnection, double> _schedule = new();

    public EpollLoadLoop(int index, LoadGenerator owner, EpollLoadConnection[] connections)
        : base(index, owner)
    {
        _connections = connections;
        var options = owner.Options;
        _size = options.MessageSize;
        _depth = options.Depth;
        _openLoop = options.Rate is not null;
        _interval = _openLoop ? Stopwatch.Frequency / (options.Rate!.Value / options.Connections) : 0;
        _buffer = GC.AllocateUninitializedArray<byte>(Math.Max(256 * 1024, _size), pinned: true);
        _lookup = new EpollLoadConnection?[connections.Length == 0 ? 0 : connections.Max(c => c.Index) + 1];
        foreach (var c in connections)
        {
            _lookup[c.Index] = c;
        }

        Start();
    }

    protected override void Begin(long start)
    {
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
                c.NextDue = start + _interval * c.Index / Math.Max(1, Owner.Options.Connections);
                _schedule.Enqueue(c, c.NextDue);
            }
            else
            {
                Queue(c, _depth, start);
                Flush(c);
            }
        }
    }

    protected override void OnEvent(ulong token, uint happened)
    {
        var c = _lookup[(int)token];
        if (c is null || c.Done)
        {
            return;
        }

        if ((happened & Native.EPOLLOUT) != 0)
        {
            Flush(c);
        }

        if (!c.Done && (happened & (Native.EPOLLIN | Native.EPOLLERR | Native.EPOLLHUP)) != 0)
        {
            OnReadable(c);
        }
    }

    protected override void OnTick(long now)
    {
        if (_openLoop)
        {
            SendDue(now);
        }
    }

    protected override double? NextDeadline() => _openLoop && _schedule.TryPeek(out _, out double due) ? due : null;

    protected override void FailAll()
    {
        foreach (var c in _connections)
        {
            Fail(c);
        }
    }

    /// <summary>Queues <paramref name="count"/> messages stamped <paramref name="timestamp"/> (their bytes go out in <see cref="Flush"/>).</summary>
    private void Queue(EpollLoadConnection c, int count, long timestamp)
    {
        c.Ledger.Sent(count, timestamp);
        c.Unsent += (long)count * _size;
    }

    /// <summary>Sends queued pattern bytes until done or the kernel is full (then EPOLLOUT is armed).</summary>
    private void Flush(EpollLoadConnection c)
    {
        fixed (byte* pattern = Owner.PatternArray)
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
        var histogram = MeasuringHistogram;
        int completed = c.Ledger.Received(_buffer.AsSpan(0, n), Owner.Pattern(c.Ledger.ReceivePosition, n), now, histogram);
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
        c.Failed = !Owner.Stopping;
        if (c.Failed)
        {
            Owner.ReportDrop(errno == 0 ? null : Native.ToSocketError(errno));
        }

        Control(Native.EPOLL_CTL_DEL, c.Fd, 0, 0);
    }
}

using System.Diagnostics;

namespace EchoKit.Internal.Epoll;

// Under dense traffic: busy connections read directly, out of epoll (see MakeHot).
internal sealed unsafe partial class EpollLoop
{
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
            _hotRetryMs = _nowMs + _hotBackoffMs;
            _hotBackoffMs = Math.Min(_hotBackoffMs * 2, HotBackoffMaxMs);
        }
        else
        {
            _hotBackoffMs = HotBackoffMinMs;
        }

        _sweepHits = _sweepMisses = 0;
    }
}

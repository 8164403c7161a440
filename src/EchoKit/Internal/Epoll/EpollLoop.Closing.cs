using System.Diagnostics;
using System.Net.Sockets;

namespace EchoKit.Internal.Epoll;

// The tick (timeouts, the drain, the accept back-off) and every way a connection ends.
internal sealed unsafe partial class EpollLoop
{
    /// <summary>Timeouts, the drain and the accept back-off, every tick (only when one of them is in force).</summary>
    private void Tick(long now)
    {
        if (!_listening && !_stopAccepting && now >= _acceptResumeMs)
        {
            ListenerAdd();
        }

        long prefixDue = long.MaxValue;
        if (_policy.Any || _draining || _server.Options.PrefixStages.Count > 0)
        {
            bool deadlinePassed = _draining && now >= _drainDeadlineMs;
            if (deadlinePassed && _count > 0)
            {
                _engine.CountAborted(_count); // the server logs the sum once, not one line per loop
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
                else if (c.Prefix is { } prefix)
                {
                    if (now >= prefix.DeadlineMs)
                    {
                        c.Detail = prefix.TimeoutReason; // a prefix that never completes cannot hold a connection
                        Close(c, CloseReason.Refused, Ending.ShutdownBoth);
                    }
                    else
                    {
                        prefixDue = Math.Min(prefixDue, prefix.DeadlineMs);
                    }
                }
                else if (_policy.Check(now, c.LastReceiveMs, c.LastSendProgressMs, c.SendBlockedMs, c.SinkBlocked) is var verdict
                    && verdict != CloseReason.None)
                {
                    if (verdict == CloseReason.SendTimeout)
                    {
                        // The peer may have read while this loop could not look (a stall, SIGSTOP): try once more.
                        OnWritable(c);
                        if (_byFd[fd] == c && _policy.Check(now, c.LastReceiveMs, c.LastSendProgressMs, c.SendBlockedMs, c.SinkBlocked) == CloseReason.SendTimeout)
                        {
                            Close(c, CloseReason.SendTimeout, Ending.Reset);
                        }
                    }
                    else if (!TimeoutPolicy.KernelSaysActive(c.Fd, ref c.LastUnsent))
                    {
                        Close(c, CloseReason.IdleTimeout, Ending.ShutdownBoth);
                    }
                }
                else if (_draining && TimeoutPolicy.ReadyForFin(now, c.LastReceiveMs, _quietMs, c.FinSent, busy: c.PendingBytes > 0 || c.SinkBlocked))
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
            next = Math.Min(next, _acceptResumeMs);
        }

        _nextTickMs = Math.Min(next, prefixDue);
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
        _server.ReportClosed(new ClosedConnection(c.Id, c.Peer, reason, c.Error, c.BytesIn, c.BytesOut, Stopwatch.GetElapsedTime(c.StartTimestamp)) { Detail = c.Detail });
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

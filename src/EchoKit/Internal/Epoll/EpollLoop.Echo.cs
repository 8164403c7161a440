using System.Buffers;

namespace EchoKit.Internal.Epoll;

// Reading, echoing and sending: the receive → send path, and what is kept when a peer does not read.
internal sealed unsafe partial class EpollLoop
{
    /// <summary>
    /// Reads and echoes. Reading is edge-triggered (a level-triggered socket is polled again by the next
    /// epoll_wait after every message, measured at 2 % of the C server's time): a read that comes back
    /// short has emptied the socket, and bytes arriving later raise a new edge. Two cases need more:
    /// a full read may have left bytes behind that nothing will announce, so read again, up to
    /// <see cref="ReadRounds"/> times, then re-arm the socket (EPOLL_CTL_MOD looks at it again) so that
    /// other connections get their turn; and when the event says the peer has shut down (RDHUP/HUP/ERR),
    /// its FIN came with the bytes and a short read stops just before it: read on until recv says so. The
    /// same when TCP urgent data arrived (EPOLLPRI): a read stops at the urgent mark.
    /// </summary>
    private void OnReadable(EpollConnection c, uint events)
    {
        // Urgent data (EPOLLPRI) makes a read stop short at its mark with bytes still queued: read on too.
        bool toTheEnd = (events & (Native.EPOLLRDHUP | Native.EPOLLHUP | Native.EPOLLERR | Native.EPOLLPRI)) != 0;
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
        c.LastReceiveMs = _nowMs;
        _dump?.Record(c.Id, c.Peer, inbound: true, c.BytesIn, new ReadOnlySpan<byte>(_bufferPointer, n));
        c.BytesIn += n;
        if (c.FinSent)
        {
            return true; // we said goodbye at shutdown; drop what still arrives
        }

        if (c.Prefix is not null)
        {
            return ReadPrefix(c, n); // before the greeting: the prefix stages read first
        }

        if (!WriteOrKeep(c, _bufferPointer, n))
        {
            return false;
        }

        return CopyToSink(c, _buffer.AsMemory(0, n));
    }

    /// <summary>A copy of echoed bytes for stdout; false never (the sink's backpressure pauses reading instead).</summary>
    private bool CopyToSink(EpollConnection c, ReadOnlyMemory<byte> echoed)
    {
        if (_server.PayloadSink is not { } sink)
        {
            return true;
        }

        var written = sink.WriteAsync(c.Id, echoed); // the sink copies before it returns
        if (!written.IsCompletedSuccessfully)
        {
            PauseForSink(c, written);
        }

        return true;
    }

    /// <summary>
    /// Bytes that arrived while the prefix stages read: handed to them; once they are done, the greeting goes
    /// out and the bytes after the prefix are echoed behind it, in one send (so neither can overtake the other).
    /// </summary>
    private bool ReadPrefix(EpollConnection c, int n)
    {
        var reader = c.Prefix!;
        if (reader.Feed(_buffer.AsSpan(0, n)) is not { } outcome)
        {
            return true; // more to come
        }

        if (outcome.RefusedBecause is { } reason)
        {
            c.Detail = reason;
            Close(c, CloseReason.Refused, Ending.ShutdownBoth);
            return false;
        }

        c.Prefix = null;
        c.Peer = reader.Context.Peer;
        return StartEcho(c, outcome.Payload);
    }

    /// <summary>The greeting, then <paramref name="payload"/> (bytes that came with a prefix) echoed behind it.</summary>
    private bool StartEcho(EpollConnection c, byte[] payload)
    {
        byte[] first = _server.Options.SendGreeting ? [.. Greeting.Bytes.Span, .. payload] : payload;
        if (first.Length > 0)
        {
            fixed (byte* bytes = first)
            {
                if (!WriteOrKeep(c, bytes, first.Length))
                {
                    return false;
                }
            }
        }

        UpdateEvents(c);
        return payload.Length == 0 || CopyToSink(c, payload);
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
            c.SendBlockedMs = _nowMs;
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
                _dump?.Record(c.Id, c.Peer, inbound: false, c.BytesOut, new ReadOnlySpan<byte>(data + total, (int)sent));
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
            c.SendBlockedMs = _nowMs; // progress: the send timeout counts from here
            c.LastSendProgressMs = _nowMs; // and bytes moving to the peer are not idleness
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
        c.SendBlockedMs = 0;
    }
}

using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using EchoKit.Internal.Datagrams;
using EchoKit.Internal.Epoll;

namespace EchoKit.Bench;

/// <summary>
/// The load generator's UDP loop, measuring as echoload --udp does, so that the two agree on the same server.
/// A datagram is <see cref="HeaderBytes"/> of header (flow index u32, a check word hashed from flow, sequence
/// number and seed u32, sequence number u64; little-endian) and then pattern bytes from the flow's offset +
/// sequence × size. Each echo is checked whole (length, header, sequence number actually in flight, payload);
/// one not back within <see cref="BenchOptions.UdpTimeout"/> is lost and its slot goes on with the next
/// sequence number (closed loop: re-sent at once); an echo of a sequence number given up, or a second echo, is
/// late; an on-time echo older than one already back is reordered. A flow's due datagrams go out in one
/// sendmmsg, its echoes come in by recvmmsg (up to 64 at a time).
/// </summary>
internal sealed unsafe class UdpLoadLoop : LoadEventLoop
{
    public const int HeaderBytes = 16;
    private const int Batch = 64;

    private readonly UdpLoadFlow[] _flows;
    private readonly UdpLoadFlow?[] _lookup;
    private readonly int _size;
    private readonly uint _seed;
    private readonly bool _openLoop;
    private readonly double _interval; // open loop: Stopwatch ticks between one flow's datagrams
    private readonly long _timeoutTicks;
    private readonly long _scanTicks;
    private readonly PriorityQueue<UdpLoadFlow, double> _schedule = new();
    private readonly DatagramNative.MMsgHdr[] _send = GC.AllocateArray<DatagramNative.MMsgHdr>(Batch, pinned: true);
    private readonly DatagramNative.IoVec[] _sendIov = GC.AllocateArray<DatagramNative.IoVec>(2 * Batch, pinned: true);
    private readonly byte[] _headers = GC.AllocateArray<byte>(HeaderBytes * Batch, pinned: true);
    private readonly DatagramNative.MMsgHdr[] _receive = GC.AllocateArray<DatagramNative.MMsgHdr>(Batch, pinned: true);
    private readonly DatagramNative.IoVec[] _receiveIov = GC.AllocateArray<DatagramNative.IoVec>(Batch, pinned: true);
    private readonly byte[] _received;
    private readonly int _stride;
    private long _lastScan;

    public UdpLoadLoop(int index, LoadGenerator owner, UdpLoadFlow[] flows)
        : base(index, owner)
    {
        _flows = flows;
        var options = owner.Options;
        _size = options.MessageSize;
        _seed = (uint)options.Seed;
        _openLoop = options.Rate is not null;
        _interval = _openLoop ? Stopwatch.Frequency / (options.Rate!.Value / options.Connections) : 0;
        _timeoutTicks = (long)(options.UdpTimeout.TotalSeconds * Stopwatch.Frequency);
        _scanTicks = Math.Max(_timeoutTicks / 4, Stopwatch.Frequency / 1000);
        _stride = (_size + 64 + 63) & ~63; // room past the size: a longer echo shows as longer, not cut to fit
        _received = GC.AllocateUninitializedArray<byte>(_stride * Batch, pinned: true);
        _lookup = new UdpLoadFlow?[flows.Length == 0 ? 0 : flows.Max(f => f.Index) + 1];
        foreach (var f in flows)
        {
            _lookup[f.Index] = f;
        }

        Start();
    }

    /// <summary>Slots in flight per flow: the depth in closed loop; open loop may have up to 64 (or the depth) out.</summary>
    public static int SlotsPerFlow(BenchOptions options) => options.Rate is null ? options.Depth : Math.Max(options.Depth, Batch);

    /// <summary>echoload's check word, so that a datagram of another flow, or from another run, is told apart.</summary>
    public static uint Check(uint flow, ulong sequence, uint seed)
    {
        ulong z = (sequence * 0x9E3779B97F4A7C15UL) ^ (((ulong)flow << 32) | flow) ^ (seed * 0xD1B54A32D192ED03UL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return (uint)(z ^ (z >> 31));
    }

    protected override void Begin(long start)
    {
        _lastScan = start;
        foreach (var f in _flows)
        {
            if (Control(Native.EPOLL_CTL_ADD, f.Fd, Native.EPOLLIN, (ulong)f.Index) < 0)
            {
                Fail(f, Marshal.GetLastPInvokeError());
                continue;
            }

            if (_openLoop)
            {
                // Spread the flows' schedules over one interval, as one total rate.
                f.NextDue = start + _interval * f.Index / Math.Max(1, Owner.Options.Connections);
                _schedule.Enqueue(f, f.NextDue);
            }
            else
            {
                for (int s = 0; s < f.Slots; s++)
                {
                    Queue(f, s, start);
                }

                Flush(f);
            }
        }
    }

    protected override void OnEvent(ulong token, uint happened)
    {
        var f = _lookup[(int)token];
        if (f is null || f.Done)
        {
            return;
        }

        if ((happened & (Native.EPOLLIN | Native.EPOLLERR)) != 0)
        {
            Readable(f);
        }

        if (!f.Done && f.QueuedCount > 0)
        {
            Flush(f);
        }
    }

    protected override void OnTick(long now)
    {
        if (_openLoop)
        {
            SendDue(now);
        }

        if (now - _lastScan >= _scanTicks)
        {
            _lastScan = now;
            Expire(now);
        }
    }

    protected override double? NextDeadline()
    {
        double scan = _lastScan + _scanTicks;
        return _openLoop && _schedule.TryPeek(out _, out double due) ? Math.Min(due, scan) : scan;
    }

    protected override void FailAll()
    {
        foreach (var f in _flows)
        {
            Fail(f, 0);
        }
    }

    private static void Queue(UdpLoadFlow f, int slot, long timestamp)
    {
        f.SentAt[slot] = timestamp;
        f.State[slot] = UdpLoadFlow.Queued;
        f.SendQueue[f.QueuedCount++] = slot;
    }

    /// <summary>Sends the flow's queued datagrams, up to 64 per sendmmsg; a full socket arms EPOLLOUT.</summary>
    private void Flush(UdpLoadFlow f)
    {
        int done = 0;
        var pattern = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Owner.PatternArray));
        fixed (DatagramNative.MMsgHdr* send = _send)
        fixed (DatagramNative.IoVec* iov = _sendIov)
        fixed (byte* headers = _headers)
        {
            while (done < f.QueuedCount)
            {
                int count = Math.Min(Batch, f.QueuedCount - done);
                for (int j = 0; j < count; j++)
                {
                    ulong sequence = f.Sequence[f.SendQueue[done + j]];
                    var header = new Span<byte>(headers + (j * HeaderBytes), HeaderBytes);
                    BinaryPrimitives.WriteUInt32LittleEndian(header, (uint)f.Index);
                    BinaryPrimitives.WriteUInt32LittleEndian(header[4..], Check((uint)f.Index, sequence, _seed));
                    BinaryPrimitives.WriteUInt64LittleEndian(header[8..], sequence);
                    iov[2 * j] = new DatagramNative.IoVec { Base = headers + (j * HeaderBytes), Length = HeaderBytes };
                    iov[(2 * j) + 1] = new DatagramNative.IoVec { Base = pattern + PatternPosition(f, sequence), Length = (nuint)(_size - HeaderBytes) };
                    send[j] = new DatagramNative.MMsgHdr { Iov = &iov[2 * j], IovLength = _size > HeaderBytes ? 2u : 1u };
                }

                int sent = DatagramNative.SendMmsgNow(f.Fd, send, (uint)count);
                if (sent < 0)
                {
                    int errno = -sent;
                    if (errno == Native.EINTR)
                    {
                        continue;
                    }

                    if (errno is Native.EAGAIN or Native.ENOBUFS)
                    {
                        SetOutput(f, true);
                        break;
                    }

                    Fail(f, errno); // ECONNREFUSED: an ICMP port unreachable came back, nobody serves the port
                    return;
                }

                for (int j = 0; j < sent; j++)
                {
                    f.State[f.SendQueue[done + j]] = UdpLoadFlow.InFlight;
                }

                done += sent;
            }
        }

        if (done > 0)
        {
            f.SendQueue.AsSpan(done, f.QueuedCount - done).CopyTo(f.SendQueue);
            f.QueuedCount -= done;
        }

        if (f.QueuedCount == 0)
        {
            SetOutput(f, false);
        }
    }

    private long PatternPosition(UdpLoadFlow f, ulong sequence) =>
        (long)(((ulong)f.PatternOffset + (sequence * (ulong)_size)) % LoadGenerator.PatternLength);

    private void SetOutput(UdpLoadFlow f, bool armed)
    {
        if (f.OutArmed != armed && Control(Native.EPOLL_CTL_MOD, f.Fd, armed ? Native.EPOLLIN | Native.EPOLLOUT : Native.EPOLLIN, (ulong)f.Index) == 0)
        {
            f.OutArmed = armed;
        }
    }

    /// <summary>Receives what has come back (up to four batches, as echoload does) and checks each datagram.</summary>
    private void Readable(UdpLoadFlow f)
    {
        int batch = Math.Min(f.Slots, Batch);
        fixed (DatagramNative.MMsgHdr* receive = _receive)
        fixed (DatagramNative.IoVec* iov = _receiveIov)
        fixed (byte* data = _received)
        {
            for (int round = 0; round < 4 && !f.Done; round++)
            {
                for (int j = 0; j < batch; j++)
                {
                    iov[j] = new DatagramNative.IoVec { Base = data + (j * _stride), Length = (nuint)_stride };
                    receive[j] = new DatagramNative.MMsgHdr { Iov = &iov[j], IovLength = 1 };
                }

                int count = DatagramNative.RecvMmsgNow(f.Fd, receive, (uint)batch);
                if (count < 0)
                {
                    int errno = -count;
                    if (errno is not (Native.EAGAIN or Native.EINTR))
                    {
                        Fail(f, errno);
                    }

                    return;
                }

                long now = Stopwatch.GetTimestamp();
                for (int j = 0; j < count; j++)
                {
                    Echoed(f, new ReadOnlySpan<byte>(data + (j * _stride), (int)Math.Min(receive[j].Length, (uint)_stride)),
                        (receive[j].Flags & DatagramNative.MSG_TRUNC) != 0, now);
                }

                if (count < batch)
                {
                    return;
                }
            }
        }
    }

    private void Echoed(UdpLoadFlow f, ReadOnlySpan<byte> datagram, bool truncated, long now)
    {
        if (truncated || datagram.Length != _size)
        {
            f.Mismatches++; // longer or shorter than sent
            return;
        }

        uint flow = BinaryPrimitives.ReadUInt32LittleEndian(datagram);
        ulong sequence = BinaryPrimitives.ReadUInt64LittleEndian(datagram[8..]);
        if (flow != (uint)f.Index || BinaryPrimitives.ReadUInt32LittleEndian(datagram[4..]) != Check(flow, sequence, _seed))
        {
            f.Mismatches++; // another flow's datagram, or a corrupted header
            return;
        }

        int slot = (int)(sequence % (ulong)f.Slots);
        if (sequence > f.Sequence[slot] || (sequence == f.Sequence[slot] && f.State[slot] != UdpLoadFlow.InFlight))
        {
            f.Mismatches++; // a sequence number this flow never sent
            return;
        }

        var pattern = Owner.PatternArray.AsSpan((int)PatternPosition(f, sequence), _size - HeaderBytes);
        if (!datagram[HeaderBytes..].SequenceEqual(pattern))
        {
            f.Mismatches++;
            return;
        }

        f.Echoes++;
        bool measuring = Owner.Measuring;
        if (sequence < f.Sequence[slot])
        {
            if (measuring)
            {
                f.Late++; // given up as lost already, or a second echo
            }

            return;
        }

        if (f.AnyEchoed && sequence < f.Highest)
        {
            if (measuring)
            {
                f.Reordered++; // on time, but after a datagram sent later
            }
        }
        else
        {
            f.Highest = sequence;
            f.AnyEchoed = true;
        }

        if (MeasuringHistogram is { } histogram)
        {
            histogram.RecordValue(Math.Max(0, (long)((now - f.SentAt[slot]) * (double)TimeSpan.TicksPerSecond / Stopwatch.Frequency)));
            f.MeasuredMessages++;
        }

        Next(f, slot, now);
    }

    /// <summary>The slot's datagram is done (echoed or lost): on to its next sequence number.</summary>
    private void Next(UdpLoadFlow f, int slot, long now)
    {
        f.Sequence[slot] += (ulong)f.Slots;
        if (_openLoop)
        {
            f.State[slot] = UdpLoadFlow.Free; // sent when the schedule says
        }
        else
        {
            Queue(f, slot, now);
        }
    }

    /// <summary>Open loop: every flow whose datagrams are due queues them, each stamped with its scheduled time.</summary>
    private void SendDue(long now)
    {
        while (_schedule.TryPeek(out var f, out double due) && due <= now)
        {
            _schedule.Dequeue();
            if (f.Done)
            {
                continue;
            }

            for (int count = 0; f.NextDue <= now && count < 4096; count++)
            {
                if (f.State[f.NextSlot] == UdpLoadFlow.Free)
                {
                    Queue(f, f.NextSlot, (long)f.NextDue);
                    f.NextSlot = (f.NextSlot + 1) % f.Slots;
                }
                else
                {
                    f.Overruns++; // every slot still in flight: the server is too far behind
                }

                f.NextDue += _interval;
            }

            if (f.NextDue <= now)
            {
                f.NextDue = now + _interval; // too far behind to catch up: start the schedule again from now
            }

            Flush(f);
            if (!f.Done)
            {
                _schedule.Enqueue(f, f.NextDue);
            }
        }
    }

    /// <summary>Datagrams in flight for longer than the timeout are lost: their slots go on with the next sequence number.</summary>
    private void Expire(long now)
    {
        bool measuring = Owner.Measuring;
        foreach (var f in _flows)
        {
            if (f.Done)
            {
                continue;
            }

            for (int s = 0; s < f.Slots; s++)
            {
                if (f.State[s] == UdpLoadFlow.InFlight && now - f.SentAt[s] > _timeoutTicks)
                {
                    if (measuring)
                    {
                        f.Lost++;
                    }

                    Next(f, s, now);
                }
            }

            if (f.QueuedCount > 0)
            {
                Flush(f);
            }
        }
    }

    /// <summary>Ends a flow; <paramref name="errno"/> is why (ECONNREFUSED: nobody serves the port), reported unless the run is ending.</summary>
    private void Fail(UdpLoadFlow f, int errno)
    {
        if (f.Done)
        {
            return;
        }

        f.Done = true;
        f.Failed = !Owner.Stopping;
        if (f.Failed)
        {
            Owner.ReportDrop(errno == 0 ? null : Native.ToSocketError(errno));
        }

        Control(Native.EPOLL_CTL_DEL, f.Fd, 0, 0);
    }
}

using System.Diagnostics;
using HdrHistogram;

namespace EchoKit.Bench;

/// <summary>
/// One flow's book of messages, the same for every way of driving it (the epoll loops and the async Socket
/// connections): a ring of send (or schedule) timestamps, one per message in flight, sized to a power of two
/// (the depth in closed loop, <see cref="OpenLoopCapacity"/> in open loop); the check of every echoed byte
/// against the pattern stream; and the latency of each completed message. Bytes that come back beyond what
/// was sent are counted as mismatches and never complete a message (the head never passes the tail).
/// Touched by one thread at a time; the counters are read by others for progress.
/// </summary>
internal sealed class MessageLedger
{
    public const int OpenLoopCapacity = 1 << 16;

    private readonly long[] _sentAt;
    private readonly int _mask;
    private readonly int _size;
    private readonly long _startOffset;
    private long _head; // next message to come back
    private long _tail; // next message to send
    private long _receivePosition;

    public MessageLedger(BenchOptions options, long startOffset)
    {
        int capacity = options.Rate is null ? (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)options.Depth) : OpenLoopCapacity;
        _sentAt = new long[capacity];
        _mask = capacity - 1;
        _size = options.MessageSize;
        _startOffset = _receivePosition = startOffset;
    }

    /// <summary>Messages sent whose echo has not come back yet.</summary>
    public long InFlight => Volatile.Read(ref _tail) - Volatile.Read(ref _head);

    /// <summary>Where the next received byte belongs in the pattern stream.</summary>
    public long ReceivePosition => _receivePosition;

    public long MeasuredMessages { get; private set; }

    public long Mismatches { get; private set; }

    /// <summary>Stopwatch timestamp of the last byte received; 0 if none yet.</summary>
    public long LastReceiveTimestamp { get; private set; }

    /// <summary>More came back than was sent (a greeting not skipped, or not an echo server).</summary>
    public bool Unsolicited { get; private set; }

    /// <summary>Whether <paramref name="count"/> more messages fit in flight (open loop: a server too far behind).</summary>
    public bool HasRoomFor(int count) => _tail - _head + count <= _sentAt.Length;

    /// <summary>Books <paramref name="count"/> messages sent together at <paramref name="timestamp"/> (closed loop).</summary>
    public void Sent(int count, long timestamp)
    {
        for (int i = 0; i < count; i++)
        {
            _sentAt[(int)(_tail++ & _mask)] = timestamp;
        }
    }

    /// <summary>Books <paramref name="count"/> messages at their scheduled times (open loop: latency counts from the schedule).</summary>
    public void Scheduled(int count, double first, double interval)
    {
        for (int i = 0; i < count; i++)
        {
            _sentAt[(int)(_tail++ & _mask)] = (long)(first + (i * interval));
        }
    }

    /// <summary>
    /// Checks bytes just received against the pattern and completes the messages they finish, recording each
    /// one's latency in <paramref name="histogram"/> while measuring. Returns how many messages completed.
    /// </summary>
    public int Received(ReadOnlySpan<byte> got, ReadOnlySpan<byte> expected, long now, LongHistogram? histogram)
    {
        if (!got.SequenceEqual(expected))
        {
            Mismatches += CountMismatches(got, expected);
        }

        _receivePosition += got.Length;
        LastReceiveTimestamp = now;
        long doneThrough = (_receivePosition - _startOffset) / _size;
        long head = _head;
        long done = Math.Min(doneThrough, _tail);
        if (doneThrough > _tail)
        {
            Mismatches++; // more came back than was sent
            Unsolicited = true;
        }

        int completed = (int)Math.Max(0, done - head);
        while (head < done)
        {
            // Messages queued together carry one timestamp (closed loop queues a batch at once): record
            // each run of equal timestamps with one histogram call.
            long sentAt = _sentAt[(int)(head & _mask)];
            long run = 1;
            while (head + run < done && _sentAt[(int)((head + run) & _mask)] == sentAt)
            {
                run++;
            }

            head += run;
            histogram?.RecordValueWithCount(Math.Max(0, TicksBetween(sentAt, now)), run);
        }

        _head = head;
        if (histogram is not null)
        {
            MeasuredMessages += completed;
        }

        return completed;
    }

    /// <summary>Stopwatch ticks between two timestamps, in TimeSpan ticks (100 ns: what the histograms hold).</summary>
    internal static long TicksBetween(long from, long to) =>
        (long)((to - from) * (double)TimeSpan.TicksPerSecond / Stopwatch.Frequency);

    internal static long CountMismatches(ReadOnlySpan<byte> got, ReadOnlySpan<byte> expected)
    {
        long count = 0;
        for (int i = 0; i < got.Length; i++)
        {
            count += got[i] != expected[i] ? 1 : 0;
        }

        return count;
    }
}

using System.Net.Sockets;

namespace EchoKit.Bench;

/// <summary>
/// One connection driven by an <see cref="EpollLoadLoop"/>: the same accounting as <see cref="LoadConnection"/>
/// (a pattern stream from its own offset, every echoed byte compared, one timestamp per message in
/// flight), without async machinery. Touched only by its loop's thread; counters are read by others for progress.
/// </summary>
internal sealed class EpollLoadConnection : ILoadFlow
{
    private const int OpenLoopQueue = 1 << 16;

    public EpollLoadConnection(LoadGenerator owner, Socket socket, long startOffset, int index)
    {
        Socket = socket;
        socket.Blocking = false;
        Fd = (int)socket.Handle;
        Index = index;
        // A power of two, so that the ring index is a mask, not a division.
        Queued = new long[owner.Options.Rate is null ? (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)owner.Options.Depth) : OpenLoopQueue];
        Mask = Queued.Length - 1;
        SendPosition = ReceivePosition = StartOffset = startOffset;
    }

    public Socket Socket { get; }

    public int Fd { get; }

    public int Index { get; }

    public long StartOffset { get; }

    /// <summary>Ring of queue (closed loop) or schedule (open loop) timestamps, one per message in flight.</summary>
    public long[] Queued { get; }

    public int Mask { get; }

    public long Head; // next message to come back

    public long Tail; // next message to send

    public long SendPosition;

    public long ReceivePosition;

    /// <summary>Bytes queued for sending that the kernel has not taken yet.</summary>
    public long Unsent;

    public uint Events;

    /// <summary>Open loop: when the next message is due (Stopwatch ticks, fractional).</summary>
    public double NextDue;

    public bool Done;

    public long MeasuredMessages { get; set; }

    public long Mismatches { get; set; }

    public long Overruns { get; set; }

    public bool Failed { get; set; }

    public long InFlight => Volatile.Read(ref Tail) - Volatile.Read(ref Head);

    public long LastReceiveTimestamp { get; set; }

    public bool Unsolicited { get; set; }

    /// <summary>Driven by its loop, not by a task of its own.</summary>
    public Task RunAsync() => Task.CompletedTask;

    public void Close() => Socket.Dispose();
}

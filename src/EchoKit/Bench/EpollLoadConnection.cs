using System.Net.Sockets;

namespace EchoKit.Bench;

/// <summary>
/// One connection driven by an <see cref="EpollLoadLoop"/>: the same accounting as <see cref="LoadConnection"/>
/// (its <see cref="MessageLedger"/>: a pattern stream from its own offset, every echoed byte compared, one
/// timestamp per message in flight), without async machinery. Touched only by its loop's thread; counters are
/// read by others for progress.
/// </summary>
internal sealed class EpollLoadConnection : ILoadFlow
{
    public EpollLoadConnection(LoadGenerator owner, Socket socket, long startOffset, int index)
    {
        Socket = socket;
        socket.Blocking = false;
        Fd = (int)socket.Handle;
        Index = index;
        Ledger = new MessageLedger(owner.Options, startOffset);
        SendPosition = startOffset;
    }

    public Socket Socket { get; }

    public int Fd { get; }

    public int Index { get; }

    public MessageLedger Ledger { get; }

    public long SendPosition;

    /// <summary>Bytes queued for sending that the kernel has not taken yet.</summary>
    public long Unsent;

    public uint Events;

    /// <summary>Open loop: when the next message is due (Stopwatch ticks, fractional).</summary>
    public double NextDue;

    public bool Done;

    public long MeasuredMessages => Ledger.MeasuredMessages;

    public long Mismatches => Ledger.Mismatches;

    public long Overruns { get; set; }

    public bool Failed { get; set; }

    public long InFlight => Ledger.InFlight;

    public long LastReceiveTimestamp => Ledger.LastReceiveTimestamp;

    public bool Unsolicited => Ledger.Unsolicited;

    /// <summary>Driven by its loop, not by a task of its own.</summary>
    public Task RunAsync() => Task.CompletedTask;

    public void Close() => Socket.Dispose();
}

using System.Net;
using System.Net.Sockets;

namespace EchoKit.Bench;

/// <summary>
/// One UDP (or Unix datagram) flow driven by a <see cref="UdpLoadLoop"/>: a connected socket that keeps up to
/// <see cref="Slots"/> datagrams in flight, one per slot. Slot k sends sequence numbers k, k+S, k+2S, ... (S
/// slots), so a sequence number names its slot; the slot's <see cref="Sequence"/> is the one it waits for (or,
/// when free, sends next). Touched only by its loop's thread; counters are read by others for progress.
/// </summary>
internal sealed class UdpLoadFlow : ILoadFlow
{
    public const byte Free = 0;
    public const byte Queued = 1;
    public const byte InFlight = 2;

    private UdpLoadFlow(Socket socket, int index, long patternOffset, int slots)
    {
        Socket = socket;
        socket.Blocking = false;
        Fd = (int)socket.Handle;
        Index = index;
        PatternOffset = patternOffset;
        Slots = slots;
        Sequence = new ulong[slots];
        SentAt = new long[slots];
        State = new byte[slots];
        SendQueue = new int[slots];
        for (int s = 0; s < slots; s++)
        {
            Sequence[s] = (ulong)s;
        }
    }

    public static UdpLoadFlow Open(LoadGenerator owner, int index, EndPoint endPoint, int slots)
    {
        var socket = endPoint is UnixDomainSocketEndPoint
            ? Client.SocketConnector.OpenUnixDatagram() // named, so that the server can answer
            : new Socket(endPoint.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            // Room for the whole window of large datagrams (the default ~208 KiB drops a burst of 64 KiB ones).
            int window = 2 * slots * (owner.Options.MessageSize + 1024);
            if (window > socket.ReceiveBufferSize)
            {
                socket.ReceiveBufferSize = Math.Min(window, 1 << 30);
                socket.SendBufferSize = Math.Min(window, 1 << 30);
            }

            socket.Connect(endPoint);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return new UdpLoadFlow(socket, index, owner.StartOffset(index), slots);
    }

    public Socket Socket { get; }

    public int Fd { get; }

    public int Index { get; }

    public long PatternOffset { get; }

    public int Slots { get; }

    /// <summary>Per slot: the sequence number in flight, queued, or (free) to send next.</summary>
    public ulong[] Sequence { get; }

    /// <summary>Per slot: when its datagram was queued (closed loop) or scheduled (open loop), Stopwatch ticks.</summary>
    public long[] SentAt { get; }

    /// <summary>Per slot: <see cref="Free"/>, <see cref="Queued"/> or <see cref="InFlight"/>.</summary>
    public byte[] State { get; }

    /// <summary>Slots queued for sending, in order; <see cref="QueuedCount"/> of them.</summary>
    public int[] SendQueue { get; }

    public int QueuedCount;

    /// <summary>Open loop: the slot the next scheduled datagram takes, and when it is due (Stopwatch ticks).</summary>
    public int NextSlot;

    public double NextDue;

    /// <summary>The highest sequence number echoed so far (for reordering).</summary>
    public ulong Highest;

    public bool AnyEchoed;

    public bool OutArmed;

    public bool Done;

    public long Echoes;

    public long MeasuredMessages { get; set; }

    public long Mismatches { get; set; }

    /// <summary>Open loop: datagrams not sent on schedule because every slot was still in flight.</summary>
    public long Overruns { get; set; }

    public long Lost { get; set; }

    public long Late { get; set; }

    public long Reordered { get; set; }

    public bool Failed { get; set; }

    /// <summary>A datagram not back in time is counted lost as it happens: nothing waits in flight for the end.</summary>
    long ILoadFlow.InFlight => 0;

    public long LastReceiveTimestamp => 0;

    public bool Unsolicited => false;

    public bool Silent => !Done && Echoes == 0;

    /// <summary>Driven by its loop, not by a task of its own.</summary>
    public Task RunAsync() => Task.CompletedTask;

    public void Close() => Socket.Dispose();
}

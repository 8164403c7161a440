using System.Net;
using System.Net.Sockets;

namespace EchoKit.Internal.Epoll;

/// <summary>
/// One connection of an <see cref="EpollLoop"/>: a descriptor and its state, touched only by its loop's
/// thread. An idle connection holds no buffer: bytes the peer would not take are kept in a pooled
/// buffer only until they are sent, and reading stops meanwhile (so TCP throttles a peer that does not read).
/// </summary>
internal sealed class EpollConnection(int fd, uint serial, long id, EndPoint? peer, long nowMs)
{
    public int Fd { get; } = fd;

    /// <summary>Tells this connection from a later one that reuses the descriptor number.</summary>
    public uint Serial { get; } = serial;

    public long Id { get; } = id;

    /// <summary>The peer as logs and close events see it (a prefix stage may replace it).</summary>
    public EndPoint? Peer { get; set; } = peer;

    /// <summary>While the prefix stages read their prefix (before the greeting); null after, and always without such stages.</summary>
    public Stages.PrefixReader? Prefix;

    /// <summary>Why, in words, when a stage refused it.</summary>
    public string? Detail;

    public long StartTimestamp { get; } = System.Diagnostics.Stopwatch.GetTimestamp();

    /// <summary>Bytes received but not yet sent back (the peer's receive window was full).</summary>
    public byte[]? Pending;

    public int PendingOffset;

    public int PendingLength;

    /// <summary>MonotonicClock.Milliseconds of the last byte received (or of the accept).</summary>
    public long LastReceiveMs = nowMs;

    /// <summary>MonotonicClock.Milliseconds of the last progress of a send that had been held up (a slow reader).</summary>
    public long LastSendProgressMs;

    /// <summary>The send queue's length (SIOCOUTQ) at the last idle check: a queue that shrinks is a peer still reading.</summary>
    public int LastUnsent;

    /// <summary>MonotonicClock.Milliseconds when sending last made no progress; 0 while nothing is pending.</summary>
    public long SendBlockedMs;

    /// <summary>The events registered with epoll; 0 while not registered (also while hot).</summary>
    public uint Events;

    /// <summary>Index in the loop's hot list while the loop reads it directly, out of epoll; -1 otherwise.</summary>
    public int HotIndex = -1;

    /// <summary>Stopwatch timestamp of the last bytes read while hot.</summary>
    public long HotLastTimestamp;

    /// <summary>The stdout sink is full: no reading until it takes more.</summary>
    public bool SinkBlocked;

    /// <summary>The peer sent FIN; the connection ends once its pending bytes are sent.</summary>
    public bool PeerEof;

    /// <summary>We sent FIN (graceful stop): what still arrives is read and dropped until the peer closes.</summary>
    public bool FinSent;

    public long BytesIn;

    public long BytesOut;

    public SocketError Error;

    public int PendingBytes => PendingLength - PendingOffset;

    /// <summary>
    /// What a connection that is reading waits for: bytes, the peer's FIN, or TCP urgent data (EPOLLPRI: a
    /// read stops short at the urgent mark, and that short read has not emptied the socket), edge-triggered.
    /// </summary>
    public const uint ReadEvents = Native.EPOLLIN | Native.EPOLLPRI | Native.EPOLLRDHUP | Native.EPOLLET;

    /// <summary>
    /// <see cref="ReadEvents"/> normally; EPOLLOUT alone (level-triggered) while bytes wait to be sent;
    /// nothing while the sink is full. Going back to reading (EPOLL_CTL_MOD or ADD) makes epoll look at
    /// the socket again, so bytes that arrived meanwhile are reported without a new edge.
    /// </summary>
    public uint WantedEvents => PendingBytes > 0 ? Native.EPOLLOUT : SinkBlocked ? 0 : ReadEvents;

    public ulong Token => ((ulong)Serial << 32) | (uint)Fd;
}

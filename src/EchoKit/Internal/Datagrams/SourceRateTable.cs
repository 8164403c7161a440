using System.Net;
using System.Net.Sockets;

namespace EchoKit.Internal.Datagrams;

/// <summary>
/// The per-source token buckets of the UDP reflection guard, in a fixed table: its memory is the same for
/// one source or a hundred million spoofed ones (<see cref="Slots"/> × 32 bytes = 2 MiB), and a datagram
/// allocates nothing (the key is read from the raw sockaddr).
///
/// Each slot holds one source's bucket (<c>rate</c> tokens a second, one second of burst). A source whose
/// slot holds another source takes that slot over if the other one's bucket has refilled (it has been quiet
/// for a second: forgetting it loses nothing); otherwise the two share the bucket. Sharing only ever drops
/// more, never answers more: a source gets at most <c>rate</c> replies a second, and all sources together
/// at most <c>rate</c> × <see cref="Slots"/>. The slot is chosen by HashCode, which is seeded per process,
/// so a spoofer cannot aim at a given source's slot. Loops share it without locks (see DatagramPolicy).
/// </summary>
internal sealed class SourceRateTable
{
    public const int Slots = 1 << 16;

    private readonly Slot[] _slots = new Slot[Slots];
    private readonly double _perMs;
    private readonly double _burst;

    public SourceRateTable(int perSecond)
    {
        _burst = perSecond;
        _perMs = perSecond / 1000.0;
    }

    private struct Slot
    {
        public ulong High;
        public ulong Low;
        public long LastMs;
        public double Tokens;
    }

    /// <summary>Takes a token for the source of <paramref name="from"/>; false: over the rate, drop it.</summary>
    public bool TryTake(SocketAddress from, long nowMs) => TryTake(from.Buffer.Span[..from.Size], nowMs);

    /// <summary>Takes a token for the source of <paramref name="sockaddr"/> (sockaddr_in or sockaddr_in6, as the kernel wrote it).</summary>
    public bool TryTake(ReadOnlySpan<byte> sockaddr, long nowMs)
    {
        var (high, low) = Key(sockaddr);
        ref var slot = ref _slots[(uint)HashCode.Combine(high, low) & (Slots - 1)];
        double tokens = slot.LastMs == 0 ? _burst : Math.Min(_burst, slot.Tokens + (nowMs - slot.LastMs) * _perMs);
        if (slot.High != high || slot.Low != low)
        {
            if (tokens >= _burst)
            {
                slot.High = high; // the occupant has been quiet for a second: the slot is the newcomer's
                slot.Low = low;
            }
        }

        slot.LastMs = Math.Max(nowMs, 1);
        if (tokens < 1)
        {
            slot.Tokens = tokens;
            return false;
        }

        slot.Tokens = tokens - 1;
        return true;
    }

    /// <summary>The source address (not the port) as 128 bits: IPv4 in the low word, IPv6 (mapped IPv4 too) whole.</summary>
    private static (ulong High, ulong Low) Key(ReadOnlySpan<byte> bytes)
    {
        if (SocketAddressFamily.Of(bytes) == AddressFamily.InterNetwork)
        {
            return (0, BitConverter.ToUInt32(bytes.Slice(4, 4))); // sockaddr_in: sin_addr at 4
        }

        return (BitConverter.ToUInt64(bytes.Slice(8, 8)), BitConverter.ToUInt64(bytes.Slice(16, 8))); // sockaddr_in6: sin6_addr at 8
    }
}

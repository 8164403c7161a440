using EchoKit.Internal.Epoll;

namespace EchoKit.Internal;

/// <summary>
/// The idle and send timeouts and the drain's goodbye, decided the same way by both engines (the epoll
/// loop's tick and the Socket engine's heartbeat), from what each knows of a connection:
/// - **Send timeout**: a send held up by a peer that does not read, with no progress for the send timeout.
/// - **Idle**: no bytes moving either way for the idle timeout. A connection held up by backpressure (its echo
///   waiting for a slow reader, or stdout) is the send timeout's business, not idle; and before a connection is
///   closed as idle the kernel is asked (<see cref="KernelSaysActive"/>): bytes waiting to be read (after a
///   stall the check can come before the read), or our send queue still shrinking (a slow reader taking the
///   last of our echo), are activity.
/// - **Drain**: a connection that has echoed everything and been quiet for the drain's quiet time gets a FIN.
/// </summary>
internal readonly struct TimeoutPolicy(TimeSpan idleTimeout, TimeSpan sendTimeout)
{
    public long IdleMs { get; } = (long)idleTimeout.TotalMilliseconds;

    public long SendMs { get; } = (long)sendTimeout.TotalMilliseconds;

    public bool Any => IdleMs > 0 || SendMs > 0;

    /// <summary>How often to check: a quarter of the shortest timeout, between 10 ms and 1 s, so a timeout D fires within 1.25·D.</summary>
    public TimeSpan CheckInterval
    {
        get
        {
            long shortest = 1000;
            foreach (long timeout in new[] { IdleMs, SendMs })
            {
                if (timeout > 0 && timeout / 4 < shortest)
                {
                    shortest = timeout / 4;
                }
            }

            return TimeSpan.FromMilliseconds(Math.Max(shortest, 10));
        }
    }

    /// <summary>
    /// The verdict for one connection now: <see cref="CloseReason.SendTimeout"/>, <see cref="CloseReason.IdleTimeout"/>
    /// (pending <see cref="KernelSaysActive"/>), or <see cref="CloseReason.None"/>.
    /// </summary>
    /// <param name="sendHeldSinceMs">When the held-up send last made progress; 0 when no send is held up.</param>
    /// <param name="heldBack">Reading is held back by something other than the peer (the payload sink).</param>
    public CloseReason Check(long nowMs, long lastReceiveMs, long lastSendProgressMs, long sendHeldSinceMs, bool heldBack)
    {
        if (sendHeldSinceMs != 0)
        {
            return SendMs > 0 && nowMs - sendHeldSinceMs >= SendMs ? CloseReason.SendTimeout : CloseReason.None;
        }

        return IdleMs > 0 && !heldBack && nowMs - Math.Max(lastReceiveMs, lastSendProgressMs) >= IdleMs
            ? CloseReason.IdleTimeout
            : CloseReason.None;
    }

    /// <summary>
    /// The kernel's word before an idle close: bytes waiting to be read, or our send queue changed since the
    /// last look (<paramref name="lastUnsent"/>, the caller's to keep). A queue that has not moved since then is
    /// a peer that stopped reading.
    /// </summary>
    public static bool KernelSaysActive(int fd, ref int lastUnsent)
    {
        if (Native.BytesReadable(fd) > 0)
        {
            return true;
        }

        int unsent = Native.BytesUnsent(fd);
        if (unsent > 0 && unsent != lastUnsent)
        {
            lastUnsent = unsent;
            return true;
        }

        return false;
    }

    /// <summary>The drain: a connection with nothing left to echo, quiet for <paramref name="quietMs"/>, gets its FIN now.</summary>
    public static bool ReadyForFin(long nowMs, long lastReceiveMs, long quietMs, bool finSent, bool busy) =>
        !finSent && !busy && nowMs - lastReceiveMs >= quietMs;
}

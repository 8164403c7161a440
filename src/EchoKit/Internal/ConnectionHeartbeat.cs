namespace EchoKit.Internal;

/// <summary>
/// One timer for all connections (as Kestrel's heartbeat): each tick it closes connections that
/// moved no bytes either way for the idle timeout, and resets those whose pending send has not completed
/// within the send timeout. This keeps timers and cancellation tokens off the per-message path.
/// </summary>
internal sealed class ConnectionHeartbeat : IDisposable
{
    private readonly Timer _timer;
    private readonly Func<IEnumerable<EchoConnection>> _connections;
    private readonly long _idleMs;
    private readonly long _sendMs;

    public ConnectionHeartbeat(TimeSpan idleTimeout, TimeSpan sendTimeout, Func<IEnumerable<EchoConnection>> connections)
    {
        _connections = connections;
        _idleMs = (long)idleTimeout.TotalMilliseconds;
        _sendMs = (long)sendTimeout.TotalMilliseconds;
        Interval = PickInterval(idleTimeout, sendTimeout);
        _timer = new Timer(static state => ((ConnectionHeartbeat)state!).Tick(), this, Interval, Interval);
    }

    public TimeSpan Interval { get; }

    /// <summary>A quarter of the shortest timeout, between 10 ms and 1 s: a timeout D fires within 1.25·D.</summary>
    internal static TimeSpan PickInterval(TimeSpan idleTimeout, TimeSpan sendTimeout)
    {
        var shortest = TimeSpan.FromSeconds(1);
        foreach (var timeout in new[] { idleTimeout, sendTimeout })
        {
            if (timeout > TimeSpan.Zero && timeout / 4 < shortest)
            {
                shortest = timeout / 4;
            }
        }

        return shortest < TimeSpan.FromMilliseconds(10) ? TimeSpan.FromMilliseconds(10) : shortest;
    }

    private void Tick()
    {
        long now = MonotonicClock.Milliseconds;
        foreach (var connection in _connections())
        {
            if (connection.Reason != CloseReason.None)
            {
                continue; // already ending
            }

            long sendStarted = connection.SendStartedMs;
            if (_sendMs > 0 && sendStarted != 0 && now - sendStarted >= _sendMs)
            {
                connection.Abort(CloseReason.SendTimeout, reset: true);
            }
            else if (_idleMs > 0 && connection.IsIdle(now, _idleMs))
            {
                connection.Abort(CloseReason.IdleTimeout, reset: false);
            }
        }
    }

    public void Dispose() => _timer.Dispose();
}

namespace EchoKit.Internal.Sockets;

/// <summary>
/// One timer for all connections (as Kestrel's heartbeat): each tick it closes connections that
/// moved no bytes either way for the idle timeout, and resets those whose pending send has not completed
/// within the send timeout. This keeps timers and cancellation tokens off the per-message path.
/// </summary>
internal sealed class ConnectionHeartbeat : IDisposable
{
    private readonly Timer _timer;
    private readonly Func<IEnumerable<EchoConnection>> _connections;
    private readonly TimeoutPolicy _policy;

    public ConnectionHeartbeat(TimeoutPolicy policy, Func<IEnumerable<EchoConnection>> connections)
    {
        _connections = connections;
        _policy = policy;
        Interval = policy.CheckInterval;
        _timer = new Timer(static state => ((ConnectionHeartbeat)state!).Tick(), this, Interval, Interval);
    }

    public TimeSpan Interval { get; }

    private void Tick()
    {
        long now = MonotonicClock.Milliseconds;
        foreach (var connection in _connections())
        {
            if (connection.Reason != CloseReason.None)
            {
                continue; // already ending
            }

            long lastReceive = connection.LastReceiveMs;
            switch (_policy.Check(now, lastReceive, connection.LastSendProgressMs, connection.SendStartedMs, connection.Busy))
            {
                case CloseReason.SendTimeout:
                    connection.Abort(CloseReason.SendTimeout, reset: true);
                    break;
                case CloseReason.IdleTimeout when !connection.StillActive(lastReceive):
                    connection.Abort(CloseReason.IdleTimeout, reset: false);
                    break;
            }
        }
    }

    public void Dispose() => _timer.Dispose();
}

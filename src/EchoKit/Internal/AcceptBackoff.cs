using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal;

/// <summary>
/// What an accept loop does when accept fails, the same in both engines (StreamListener's loop and the epoll
/// loops): an error of one pending connection (reset or aborted in the backlog) is skipped at once; anything
/// else (EMFILE, ENFILE, ENOBUFS, ENOMEM …) backs off from 5 ms doubling to 1 s instead of spinning, with one
/// log line a second at most. A success resets the delay. One instance per accepting thread.
/// </summary>
internal sealed class AcceptBackoff(ILogger logger, Action<SocketError>? counted = null)
{
    public static readonly TimeSpan Min = TimeSpan.FromMilliseconds(5);
    public static readonly TimeSpan Max = TimeSpan.FromSeconds(1);

    private TimeSpan _delay = Min;
    private long _lastLogMs = long.MinValue / 2;
    private long _suppressed;

    /// <summary>Errors that belong to one pending connection, not to the listener: skip it and accept the next.</summary>
    public static bool IsPendingConnectionError(SocketError error) =>
        error is SocketError.ConnectionAborted or SocketError.ConnectionReset or SocketError.NetworkReset
            or SocketError.Interrupted or SocketError.WouldBlock or SocketError.TimedOut or SocketError.HostUnreachable
            or SocketError.NetworkUnreachable or SocketError.ProtocolNotSupported;

    public void Succeeded() => _delay = Min;

    /// <summary>Records a failure of the listener; returns how long to wait before accepting again.</summary>
    public TimeSpan Failed(SocketError error)
    {
        counted?.Invoke(error);
        long now = MonotonicClock.Milliseconds;
        var delay = _delay;
        if (now - _lastLogMs >= 1000)
        {
            Log.AcceptFailed(logger, SocketErrorText.Describe(error), (long)delay.TotalMilliseconds, _suppressed);
            _lastLogMs = now;
            _suppressed = 0;
        }
        else
        {
            _suppressed++;
        }

        _delay = delay * 2 > Max ? Max : delay * 2;
        return delay;
    }
}

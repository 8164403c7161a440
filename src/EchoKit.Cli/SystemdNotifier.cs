using System.Net.Sockets;
using System.Text;
using Microsoft.Extensions.Logging;

namespace EchoKit.Cli;

/// <summary>
/// sd_notify(3) for a server run by systemd (<c>Type=notify</c>): datagrams to the Unix socket named by
/// NOTIFY_SOCKET (a path, or <c>@name</c> in the abstract namespace). <c>READY=1</c> once every listener is up,
/// <c>STATUS=</c> with the connection count when it changes (looked at each second), <c>STOPPING=1</c> when the
/// graceful stop begins, and <c>WATCHDOG=1</c> every half WATCHDOG_USEC when that is set (for this process:
/// WATCHDOG_PID, if set, must be ours). A message that cannot be sent is one warning, never a failure: the
/// server serves whether or not anyone listens.
/// </summary>
internal sealed class SystemdNotifier : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
    private readonly UnixDomainSocketEndPoint _target;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop = new();
    private int _warned;

    private SystemdNotifier(string path, ILogger logger)
    {
        _target = new UnixDomainSocketEndPoint(path.StartsWith('@') ? "\0" + path[1..] : path);
        _logger = logger;
    }

    /// <summary>The notifier NOTIFY_SOCKET asks for, or null when the server is not run by systemd (or alike).</summary>
    public static SystemdNotifier? FromEnvironment(ILogger logger) =>
        Environment.GetEnvironmentVariable("NOTIFY_SOCKET") is { Length: > 1 } path && (path[0] is '/' or '@')
            ? new SystemdNotifier(path, logger)
            : null;

    /// <summary>READY=1 with the first status, then the status and watchdog timers.</summary>
    public void Ready(Func<int> connections)
    {
        int last = connections();
        var token = _stop.Token;
        Send($"READY=1\nSTATUS={Status(last)}");
        _ = Task.Run(async () =>
        {
            using var tick = new PeriodicTimer(TimeSpan.FromSeconds(1));
            while (await tick.WaitForNextTickAsync(token).ConfigureAwait(false))
            {
                int now = connections();
                if (now != last)
                {
                    last = now;
                    Send($"STATUS={Status(now)}");
                }
            }
        });
        if (WatchdogInterval() is { } interval)
        {
            _ = Task.Run(async () =>
            {
                using var tick = new PeriodicTimer(interval);
                do
                {
                    Send("WATCHDOG=1");
                }
                while (await tick.WaitForNextTickAsync(token).ConfigureAwait(false));
            });
        }
    }

    /// <summary>STOPPING=1: the graceful stop has begun (systemd shows "deactivating").</summary>
    public void Stopping(int connections)
    {
        _stop.Cancel();
        Send($"STOPPING=1\nSTATUS=stopping: draining {Internal.Log.Count(connections, "connection")}");
    }

    private static string Status(int connections) => $"serving {Internal.Log.Count(connections, "connection")}";

    /// <summary>Half of WATCHDOG_USEC (systemd's advice), if it is set for this process.</summary>
    private static TimeSpan? WatchdogInterval()
    {
        if (!long.TryParse(Environment.GetEnvironmentVariable("WATCHDOG_USEC"), out long usec) || usec <= 0)
        {
            return null;
        }

        if (Environment.GetEnvironmentVariable("WATCHDOG_PID") is { Length: > 0 } pid && pid != Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture))
        {
            return null; // meant for another process (one that started us)
        }

        return TimeSpan.FromTicks(Math.Max(usec * 10 / 2, TimeSpan.TicksPerMillisecond));
    }

    private void Send(string message)
    {
        try
        {
            _socket.SendTo(Encoding.UTF8.GetBytes(message), SocketFlags.None, _target);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            if (e is SocketException s && Interlocked.Exchange(ref _warned, 1) == 0)
            {
                string path = Environment.GetEnvironmentVariable("NOTIFY_SOCKET")!;
                // .NET reports a missing socket file (ENOENT from sendto) as EADDRNOTAVAIL.
                string why = path[0] == '/' && !File.Exists(path) ? "No such file or directory (ENOENT)" : SocketErrorText.Describe(s.SocketErrorCode);
                _logger.LogWarning("sd_notify to {Socket} failed: {Error}; systemd will not hear from this server", path, why);
            }
        }
    }

    public void Dispose()
    {
        _stop.Cancel(); // the timers end at their next tick
        _socket.Dispose();
    }
}

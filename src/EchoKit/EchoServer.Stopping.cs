using EchoKit.Internal;
using EchoKit.Internal.Epoll;

namespace EchoKit;

// Graceful stop: listeners closed, connections drained, what is left reset at the shutdown timeout.
public sealed partial class EchoServer
{
    /// <summary>
    /// Graceful stop: close the listeners, let every connection echo what it has already received,
    /// FIN, and wait; after <see cref="EchoServerOptions.ShutdownTimeout"/> abort what is left.
    /// </summary>
    public Task StopAsync()
    {
        if (Exchange(ServerState.Stopping) == ServerState.Stopping)
        {
            return _stopTask ?? Task.CompletedTask;
        }

        return _stopTask = StopCoreAsync();
    }

    private async Task StopCoreAsync()
    {
        if (_loops is { } loops)
        {
            await StopLoopsAsync(loops).ConfigureAwait(false);
            return;
        }

        foreach (var listener in _listeners)
        {
            listener.Dispose();
        }

        await Task.WhenAll(_acceptLoops).ConfigureAwait(false);
        foreach (var datagrams in _datagramServices)
        {
            datagrams.Dispose();
        }

        // No accept runs any more, so no connection is added from here on.
        Log.ShuttingDown(_logger, _connections.Count, (long)Options.ShutdownTimeout.TotalMilliseconds);
        if (_connections.IsEmpty)
        {
            _drained.TrySetResult();
        }

        var all = _drained.Task;
        long deadline = MonotonicClock.Milliseconds + (long)Options.ShutdownTimeout.TotalMilliseconds;
        long quietMs = Math.Min(DrainQuietMs, (long)Options.ShutdownTimeout.TotalMilliseconds / 4);
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(10));
        while (!all.IsCompleted && MonotonicClock.Milliseconds < deadline)
        {
            // Each connection says goodbye (FIN) once it has echoed what it had and gone quiet.
            long now = MonotonicClock.Milliseconds;
            foreach (var connection in _connections.Values)
            {
                connection.TryFinishDrain(now, quietMs);
            }

            await Task.WhenAny(all, tick.WaitForNextTickAsync().AsTask()).ConfigureAwait(false);
        }

        if (!all.IsCompleted)
        {
            var left = _connections.Values.ToArray();
            Log.AbortingAtShutdown(_logger, left.Length);
            foreach (var connection in left)
            {
                connection.Abort(CloseReason.ShutdownTimeout, reset: true);
            }

            await all.ConfigureAwait(false);
        }

        _heartbeat?.Dispose();
        ReportStopped();
    }

    /// <summary>The epoll engine's graceful stop: the loops stop accepting, drain, and exit.</summary>
    private async Task StopLoopsAsync(EpollLoop[] loops)
    {
        await Task.WhenAll(loops.Select(l => l.StopAcceptingAsync())).ConfigureAwait(false);
        foreach (var listener in _listeners)
        {
            listener.Dispose(); // no loop accepts from it any more
        }

        foreach (var datagrams in _datagramServices)
        {
            datagrams.Dispose();
        }

        Log.ShuttingDown(_logger, ActiveConnections, (long)Options.ShutdownTimeout.TotalMilliseconds);
        long deadline = MonotonicClock.Milliseconds + (long)Options.ShutdownTimeout.TotalMilliseconds;
        long quietMs = Math.Min(DrainQuietMs, (long)Options.ShutdownTimeout.TotalMilliseconds / 4);
        foreach (var loop in loops)
        {
            loop.Drain(deadline, quietMs);
        }

        await Task.WhenAll(loops.Select(l => l.Exited)).ConfigureAwait(false);
        if (Volatile.Read(ref _abortedAtShutdown) is > 0 and int aborted)
        {
            Log.AbortingAtShutdown(_logger, aborted); // one line for all loops, as the Socket engine writes it
        }

        ReportStopped();
    }

    /// <summary>The "stopped" line, after every "closed" line (which may wait for the payload sink).</summary>
    private void ReportStopped()
    {
        long allocated = GC.GetTotalAllocatedBytes(precise: true);
        if (PayloadSink is { } sink)
        {
            sink.AfterWritten(() => Log.Stopped(_logger, allocated));
        }
        else
        {
            Log.Stopped(_logger, allocated);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (State == ServerState.Started)
        {
            await StopAsync().ConfigureAwait(false);
        }
        else if (_stopTask is { } stopping)
        {
            await stopping.ConfigureAwait(false); // a StopAsync nobody awaited: its drain is not over yet
        }
        else
        {
            Exchange(ServerState.Stopping);
            foreach (var listener in _listeners)
            {
                listener.Dispose();
            }
        }
    }
}

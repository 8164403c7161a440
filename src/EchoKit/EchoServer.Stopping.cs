using EchoKit.Internal;

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

    /// <summary>
    /// The one stop path, whatever the engine: stop accepting, close the listeners and datagram services,
    /// drain the engine until the shutdown timeout, say how many were reset, and say stopped.
    /// </summary>
    private async Task StopCoreAsync()
    {
        _health?.Dispose(); // first: a load balancer stops sending new connections while these drain
        if (!_migratesBacklog)
        {
            // No new handshake starts; those under way complete into the backlogs, which the engine then drains.
            // With SO_REUSEPORT and tcp_migrate_req the kernel moves a closing listener's backlog to the next
            // process on the port instead, at once, so there the listeners just close.
            foreach (var listener in _listeners)
            {
                listener.HoldNewHandshakes();
            }
        }

        if (_engine is { } engine)
        {
            await engine.StopAcceptingAsync().ConfigureAwait(false);
        }

        _acceptingEnded = true;

        foreach (var listener in _listeners)
        {
            listener.Dispose(); // no engine accepts from it any more
        }

        foreach (var datagrams in _datagramServices)
        {
            datagrams.Dispose();
        }

        Log.ShuttingDown(_logger, ActiveConnections, (long)Options.ShutdownTimeout.TotalMilliseconds);
        long deadlineMs = MonotonicClock.Milliseconds + (long)Options.ShutdownTimeout.TotalMilliseconds;
        long quietMs = Math.Min(DrainQuietMs, (long)Options.ShutdownTimeout.TotalMilliseconds / 4);
        int aborted = _engine is null ? 0 : await _engine.DrainAsync(deadlineMs, quietMs).ConfigureAwait(false);
        if (aborted > 0)
        {
            Log.AbortingAtShutdown(_logger, aborted); // one line for all connections, whatever the engine
        }

        ReportStopped();
        _metrics.Dispose();
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

            _metrics.Dispose();
        }
    }
}

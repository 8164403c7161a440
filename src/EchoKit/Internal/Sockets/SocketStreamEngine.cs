using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;

namespace EchoKit.Internal.Sockets;

/// <summary>
/// The Socket engine: one accept loop per listener (<see cref="StreamListener.AcceptLoopAsync"/>), one
/// <see cref="EchoConnection"/> per client, and one <see cref="ConnectionHeartbeat"/> for every timeout.
/// Portable: what runs where the epoll engine cannot, and on request (<c>--engine socket</c>).
/// </summary>
internal sealed class SocketStreamEngine(EchoServer server, IReadOnlyList<StreamListener> listeners) : IStreamEngine
{
    private readonly ConcurrentDictionary<long, EchoConnection> _connections = new();
    private readonly List<Task> _acceptLoops = [];
    private readonly TaskCompletionSource _drained = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _heartbeatGate = new();
    private ConnectionHeartbeat? _heartbeat;
    private bool _stopped; // under _heartbeatGate
    private volatile bool _draining;

    public void Start()
    {
        var options = server.Options;
        ApplyTimeouts(new TimeoutPolicy(options.IdleTimeout, options.SendTimeout));

        foreach (var listener in listeners)
        {
            _acceptLoops.Add(Task.Run(() => listener.AcceptLoopAsync(socket => OnAccepted(socket, listener.StreamStages), server.OnDescriptorsExhausted, server.CountAcceptBackoff)));
        }
    }

    public void ApplyTimeouts(TimeoutPolicy policy)
    {
        lock (_heartbeatGate)
        {
            _heartbeat?.Dispose();
            _heartbeat = policy.Any && !_stopped ? new ConnectionHeartbeat(policy, () => _connections.Values) : null;
        }
    }

    public (long In, long Out) OpenBytes()
    {
        long bytesIn = 0, bytesOut = 0;
        foreach (var connection in _connections.Values)
        {
            if (!connection.Reported)
            {
                bytesIn += connection.BytesIn;
                bytesOut += connection.BytesOut;
            }
        }

        return (bytesIn, bytesOut);
    }

    public async Task StopAcceptingAsync()
    {
        foreach (var listener in listeners)
        {
            listener.StopAccepting(); // each accept loop takes what its backlog holds, then ends
        }

        await Task.WhenAll(_acceptLoops).ConfigureAwait(false);
    }

    public async Task<int> DrainAsync(long deadlineMs, long quietMs)
    {
        // No accept runs any more, so no connection is added from here on.
        _draining = true;
        if (_connections.IsEmpty)
        {
            _drained.TrySetResult();
        }

        var all = _drained.Task;
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(10));
        while (!all.IsCompleted && MonotonicClock.Milliseconds < deadlineMs)
        {
            // Each connection says goodbye (FIN) once it has echoed what it had and gone quiet.
            long now = MonotonicClock.Milliseconds;
            foreach (var connection in _connections.Values)
            {
                connection.TryFinishDrain(now, quietMs);
            }

            await Task.WhenAny(all, tick.WaitForNextTickAsync().AsTask()).ConfigureAwait(false);
        }

        int aborted = 0;
        if (!all.IsCompleted)
        {
            var left = _connections.Values.ToArray();
            aborted = left.Length;
            foreach (var connection in left)
            {
                connection.Abort(CloseReason.ShutdownTimeout, reset: true);
            }

            await all.ConfigureAwait(false);
        }

        lock (_heartbeatGate)
        {
            _heartbeat?.Dispose();
            _stopped = true; // a reload after this starts no heartbeat
        }

        return aborted;
    }

    private void OnAccepted(Socket socket, IReadOnlyList<Stages.IStreamStage> streamStages)
    {
        EndPoint? peer = EndPointText.PeerOf(socket);
        var verdict = server.Admit((int)socket.Handle, ref peer, out long id);
        if (verdict.Refused)
        {
            if (verdict.Reply is { } reply)
            {
                try
                {
                    socket.Blocking = false;
                    socket.Send(reply, SocketFlags.None, out _);
                    socket.Shutdown(SocketShutdown.Send);
                }
                catch (SocketException)
                {
                    // Best effort: the peer may already be gone.
                }
            }

            server.ReportRefused(id, peer, verdict); // counted before the peer sees the close, so a scrape after it sees the refusal
            socket.Dispose();
            return;
        }

        RunAdmitted(socket, id, peer, reportAccepted: true, streamStages);
    }

    /// <summary>
    /// Serves a connection already admitted: one accepted here, or one the epoll engine hands over because a
    /// stage wraps its byte stream (<see cref="Stages.IStreamStage"/>), which this engine's stream loop serves.
    /// </summary>
    public void RunAdmitted(Socket socket, long id, EndPoint? peer, bool reportAccepted, IReadOnlyList<Stages.IStreamStage> streamStages)
    {
        try
        {
            if (socket.ProtocolType == ProtocolType.Tcp)
            {
                socket.NoDelay = server.Options.NoDelay;
                socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.OutOfBandInline, true); // urgent bytes echoed in place
            }
        }
        catch (SocketException)
        {
            // The peer is already gone; the connection's first call will say so.
        }

        var connection = new EchoConnection(id, socket, peer, server, this, streamStages);
        if (reportAccepted)
        {
            server.ReportAccepted(id, connection.Peer);
        }

        // Registered before it runs, so that its close always finds the entry to remove. Nothing keeps
        // its Task: the connection reports its own end (OnConnectionClosed), which is all the drain needs.
        _connections[id] = connection;
        _ = connection.RunAsync();
    }

    public void OnConnectionClosed(EchoConnection connection, ClosedConnection closed)
    {
        // Reported before the drain can see the engine empty: otherwise the "stopped" line, and the
        // process's exit, could overtake this connection's "closed" line. Marked first, so that the metrics,
        // which read the closed connections' sum before the open ones, never count its bytes twice.
        connection.Reported = true;
        server.ReportClosed(closed);
        _connections.TryRemove(connection.Id, out _);
        if (_draining && _connections.IsEmpty)
        {
            _drained.TrySetResult();
        }
    }
}

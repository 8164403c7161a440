using System.Net;
using System.Net.Sockets;
using EchoKit.Internal;
using EchoKit.Internal.Stages;

namespace EchoKit;

// Connection limits: --max-connections, the descriptor budget, and what a client past them is told.
public sealed partial class EchoServer
{
    private int EffectiveConnectionLimit()
    {
        int configured = Options.MaxConnections;
        int? budget = DescriptorBudget.Connections(_listeners.Count);
        if (budget is { } fit && (configured == 0 || fit < configured))
        {
            Log.DescriptorLimited(_logger, fit, configured == 0 ? "unlimited" : configured.ToString(System.Globalization.CultureInfo.InvariantCulture));
            return fit;
        }

        return configured;
    }

    private enum Admission
    {
        Admitted,
        Busy,
        Stopping,
    }

    /// <summary>
    /// A new connection (its <paramref name="descriptor"/>) goes through the stages in order: admission first
    /// (<see cref="AdmissionStage"/>: the limits, and the stop), then <see cref="EchoServerOptions.Stages"/>, which
    /// may replace <paramref name="peer"/>. A refused connection is the engine's to answer (the verdict's reply, if
    /// any), report with <see cref="ReportRefused"/> and then close; every engine does it the same way.
    /// </summary>
    internal StageVerdict Admit(int descriptor, ref EndPoint? peer, out long id)
    {
        id = Interlocked.Increment(ref _nextId);
        var context = new ConnectionContext(id, descriptor, peer);
        // A connection whose first bytes name the real client (PROXY from a trusted balancer) is checked once they
        // are read (AdmitAfterPrefix): the rules are about the client, not the balancer.
        bool deferred = Options.PrefixStages.Count > 0 && Options.PrefixStages.Any(s => s.AppliesTo(context));
        if (!deferred && _access.OnAccepted(context) is { Refused: true } refused)
        {
            peer = context.Peer;
            return refused; // before admission: a refused peer gets no byte, not even "server busy"
        }

        var verdict = _admission.OnAccepted(context);
        if (!verdict.Refused)
        {
            foreach (var stage in Options.Stages)
            {
                verdict = stage.OnAccepted(context);
                if (verdict.Refused)
                {
                    Interlocked.Decrement(ref _activeCount); // admitted, then refused: not counted after all
                    break;
                }
            }
        }

        peer = context.Peer;
        return verdict;
    }

    /// <summary>
    /// The prefixes are read: the client they named (if any) is logged beside the balancer, and the access rules
    /// deferred at accept judge it. A reason to refuse, or null.
    /// </summary>
    internal string? AdmitAfterPrefix(ConnectionContext context)
    {
        if (!Equals(context.Peer, context.AcceptedFrom))
        {
            Log.ClientBehind(_logger, context.Id, EndPointText.Format(context.Peer), EndPointText.Format(context.AcceptedFrom));
        }

        return _access.OnAccepted(context) is { Refused: true } verdict ? $"access: {verdict.RefusedBecause}" : null;
    }

    /// <summary>A refused connection (answered, not yet closed, by its engine): counted, logged with its reason and announced.</summary>
    internal void ReportRefused(long id, EndPoint? peer, StageVerdict verdict)
    {
        if (verdict.Reason == CloseReason.ServerShutdown)
        {
            return; // accepted as the server stopped: nothing to tell
        }

        _access.Released(id);
        bool busy = verdict.Reason == CloseReason.ServerBusy;
        var closed = new ClosedConnection(id, peer, verdict.Reason, SocketError.Success, 0, 0, TimeSpan.Zero) { Detail = busy ? null : verdict.RefusedBecause };
        _metrics.Rejected(closed);
        if (busy)
        {
            Log.Busy(_logger, EndPointText.Format(peer), _connectionLimit); // the busy line says it all: no "closed" line
        }
        else if (!verdict.Quiet)
        {
            LogClosed(closed);
        }

        ConnectionClosed?.Invoke(closed);
    }

    /// <summary>The first stage: the connection limit, the descriptor limit in force now, and the stop.</summary>
    private sealed class AdmissionStage(EchoServer server) : IConnectionStage
    {
        public StageVerdict OnAccepted(ConnectionContext connection) => server.AdmitWithinLimits(connection.Descriptor) switch
        {
            Admission.Busy => StageVerdict.Busy(server.BusyLine()),
            Admission.Stopping => StageVerdict.Stopping,
            _ => StageVerdict.Continue,
        };
    }

    private Admission AdmitWithinLimits(int descriptor)
    {
        if (DescriptorBudget.NearLimit(descriptor, out long limit))
        {
            CapAtOpenConnections(limit);
            return Admission.Busy;
        }

        if (Capped && limit >= _startDescriptorLimit && descriptor < limit - 2 * DescriptorBudget.Reserve)
        {
            RestoreStartLimit();
        }

        int count = Interlocked.Increment(ref _activeCount);
        if (_connectionLimit > 0 && count > _connectionLimit)
        {
            Interlocked.Decrement(ref _activeCount);
            return Admission.Busy;
        }

        // Accepted after the stop began (the listeners' backlogs, taken before they close): served and drained like
        // the others, not reset: for the client behind a load balancer, or the next process on the port, nothing
        // tells a connection the kernel has completed from one we have accepted. Once the engine has stopped
        // accepting, nothing should arrive; should something, it is closed.
        if (_acceptingEnded)
        {
            Interlocked.Decrement(ref _activeCount);
            return Admission.Stopping;
        }

        return Admission.Admitted;
    }

    /// <summary>The line a connection over the limit gets before it is closed.</summary>
    internal byte[] BusyLine()
    {
        var cached = _busyLine;
        int limit = _connectionLimit; // lowered at EMFILE, so cached per value
        if (cached is not { } line || line.Limit != limit)
        {
            _busyLine = cached = (limit, System.Text.Encoding.ASCII.GetBytes($"server busy: {limit} connections\n"));
        }

        return cached.Value.Line;
    }


    /// <summary>
    /// Accept met EMFILE/ENFILE although the budget taken at start should have prevented it (the limit
    /// was lowered under us, or something else holds descriptors): hand the runtime the spare
    /// descriptors it needs to keep running, and lower the connection limit below what is open now,
    /// so that further accepts are answered "server busy" and closed instead of eating the spares.
    /// </summary>
    internal void OnDescriptorsExhausted()
    {
        var reserve = Interlocked.Exchange(ref _reserve, null);
        if (reserve is null)
        {
            return;
        }

        int lowered = Math.Max(1, ActiveConnections - reserve.Count);
        lock (_limitLock)
        {
            _connectionLimit = _connectionLimit == 0 ? lowered : Math.Min(_connectionLimit, lowered);
        }

        foreach (var handle in reserve)
        {
            handle.Dispose();
        }

        Log.DescriptorLimited(_logger, _connectionLimit, "lowered after EMFILE");
    }

    /// <summary>
    /// A new connection came within a third of the reserve of the descriptor limit in force
    /// (<paramref name="limit"/>; lowered under the running server, or descriptors opened since the
    /// budget was taken): no more connections than are open now, so that the runtime keeps the
    /// descriptors it needs. Logged when the connection limit changes.
    /// </summary>
    private void CapAtOpenConnections(long limit)
    {
        int lowered = Math.Max(1, ActiveConnections);
        lock (_limitLock)
        {
            if (_connectionLimit != 0 && _connectionLimit <= lowered)
            {
                return;
            }

            _connectionLimit = lowered;
        }

        Log.DescriptorLimited(_logger, lowered, $"capped at the connections open: the descriptor limit in force is {limit}");
    }

    /// <summary>The connection limit is below the start's for want of descriptors (only lowering changes it).</summary>
    private bool Capped => Volatile.Read(ref _connectionLimit) != _startConnectionLimit;

    /// <summary>
    /// The descriptor limit is back where it was at start and a new descriptor leaves more than twice the
    /// reserve free: the connection limit of the start applies again, with a reserve of spares held anew.
    /// </summary>
    private void RestoreStartLimit()
    {
        lock (_limitLock)
        {
            if (!Capped)
            {
                return;
            }

            _connectionLimit = _startConnectionLimit;
        }

        if (Volatile.Read(ref _reserve) is null && DescriptorBudget.OpenReserve() is { } spares
            && Interlocked.CompareExchange(ref _reserve, spares, null) is not null)
        {
            spares.ForEach(handle => handle.Dispose()); // another restore took its spares first
        }

        Log.DescriptorLimited(_logger, _startConnectionLimit, "restored: the descriptor limit is back to " + _startDescriptorLimit.ToString(System.Globalization.CultureInfo.InvariantCulture));
    }
}

using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;

namespace EchoKit.Internal;

/// <summary>
/// The server's instruments (meter <c>EchoKit</c>), named after Kestrel's connection metrics and the OpenTelemetry
/// semantic conventions. Everything is recorded per connection (at accept, refusal and close), never per message:
/// the echo path does not know the meter exists: the byte and datagram counts are read from the counters the
/// engines keep anyway, when a scrape asks. Attributes: <c>network.transport</c> (tcp, udp, unix) and
/// <c>network.type</c> (ipv4, ipv6) of the peer; <c>echokit.close_reason</c> on closes, <c>error.type</c> on
/// refusals (busy, denied, per_address_limit, proxy_header, tls_handshake) and failed TLS handshakes,
/// <c>echokit.drop_reason</c> on dropped datagrams.
/// </summary>
internal sealed class ServerMetrics : IDisposable
{
    public const string MeterName = "EchoKit";

    private readonly Meter _meter = new(MeterName, typeof(ServerMetrics).Assembly.GetName().Version?.ToString(3));

    public Meter Meter => _meter;
    private readonly Histogram<double> _duration;
    private readonly Counter<long> _closed;
    private readonly Counter<long> _rejected;
    private readonly Counter<long> _acceptBackoffs;
    private readonly Histogram<double> _tlsHandshake;
    private long _bytesIn; // of the connections closed so far
    private long _bytesOut;
    // The counters never go back, though a closing connection may be counted in neither place for a moment. They
    // never count one twice: the closed sum is read before the open connections, and an engine takes a connection
    // out of its open ones (or marks it) before it adds it to the closed sum.
    private long _reportedIn;
    private long _reportedOut;

    public ServerMetrics(EchoServer server)
    {
        _meter.CreateObservableUpDownCounter("echokit.active_connections", () => server.ActiveConnections, "{connection}", "Connections open now");
        _duration = _meter.CreateHistogram("echokit.connection.duration", "s", "How long connections lasted, from accept to close",
            tags: null, new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600] });
        _closed = _meter.CreateCounter<long>("echokit.closed_connections", "{connection}", "Connections closed, by reason");
        _rejected = _meter.CreateCounter<long>("echokit.rejected_connections", "{connection}", "Connections refused, by error.type");
        _meter.CreateObservableCounter("echokit.bytes_received", () => Monotonic(ref _reportedIn, Volatile.Read(ref _bytesIn) + server.OpenConnectionBytes().In), "By", "Bytes received on stream connections, open ones included");
        _meter.CreateObservableCounter("echokit.bytes_sent", () => Monotonic(ref _reportedOut, Volatile.Read(ref _bytesOut) + server.OpenConnectionBytes().Out), "By", "Bytes sent on stream connections, open ones included");
        _acceptBackoffs = _meter.CreateCounter<long>("echokit.accept_backoffs", "{backoff}", "Times accept failed for want of resources (EMFILE, ENFILE, ENOBUFS …) and the listener paused");
        _tlsHandshake = _meter.CreateHistogram("echokit.tls.handshake.duration", "s", "TLS handshakes, by tls.protocol.version, or error.type when they failed",
            tags: null, new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 10] });
        _meter.CreateObservableCounter("echokit.datagrams.echoed", () => Datagrams(server, s => [(s.Echoed, null)]), "{datagram}", "Datagrams answered");
        _meter.CreateObservableCounter("echokit.datagrams.dropped", () => Datagrams(server, s => s.Policy.Drops().Select(d => (d.Count, (string?)d.Reason))), "{datagram}",
            "Datagrams not answered, by echokit.drop_reason (receive_queue_full: the kernel dropped them before we could read)");
    }

    private static long Monotonic(ref long reported, long now)
    {
        long last = Volatile.Read(ref reported);
        while (now > last)
        {
            long seen = Interlocked.CompareExchange(ref reported, now, last);
            if (seen == last)
            {
                return now;
            }

            last = seen;
        }

        return last;
    }

    /// <summary>One measurement per datagram transport (and reason), summed over its services.</summary>
    private static IEnumerable<Measurement<long>> Datagrams(EchoServer server, Func<Datagrams.DatagramEchoService, IEnumerable<(long Count, string? Reason)>> counts)
    {
        var sums = new Dictionary<(string Transport, string? Reason), long>();
        foreach (var service in server.DatagramServices)
        {
            string transport = service.UnixPath is null ? "udp" : "unix";
            foreach (var (count, reason) in counts(service))
            {
                sums[(transport, reason)] = sums.GetValueOrDefault((transport, reason)) + count;
            }
        }

        return sums.Select(s => s.Key.Reason is null
            ? new Measurement<long>(s.Value, new KeyValuePair<string, object?>("network.transport", s.Key.Transport))
            : new Measurement<long>(s.Value, new KeyValuePair<string, object?>("network.transport", s.Key.Transport), new KeyValuePair<string, object?>("echokit.drop_reason", s.Key.Reason)));
    }

    /// <summary>An accept loop paused after a failure of its listener.</summary>
    public void AcceptBackoff(SocketError error) => _acceptBackoffs.Add(1, new KeyValuePair<string, object?>("error.type", SocketErrorText.Of(error).Errno));

    /// <summary>A TLS handshake ended: its protocol when it succeeded, else why not.</summary>
    public void TlsHandshake(TimeSpan duration, string? protocol, string? error)
    {
        var tags = new TagList { { "network.transport", "tcp" } };
        tags.Add(protocol is null ? "error.type" : "tls.protocol.version", protocol is null ? error : protocol.Replace("TLS ", "", StringComparison.Ordinal).Replace("TLSv", "", StringComparison.Ordinal));
        _tlsHandshake.Record(duration.TotalSeconds, tags);
    }

    /// <summary>A connection that was served has closed.</summary>
    public void Closed(ClosedConnection closed)
    {
        var tags = Peer(closed.Peer);
        tags.Add("echokit.close_reason", ReasonName(closed.Reason));
        // The count last: whoever sees a connection counted as closed sees its bytes and duration too.
        Interlocked.Add(ref _bytesIn, closed.BytesIn);
        Interlocked.Add(ref _bytesOut, closed.BytesOut);
        _duration.Record(closed.Duration.TotalSeconds, tags);
        _closed.Add(1, tags);
    }

    /// <summary>A connection refused before it was served (a refusal after a prefix, too).</summary>
    public void Rejected(ClosedConnection refused)
    {
        var tags = Peer(refused.Peer);
        tags.Add("error.type", ErrorType(refused));
        _rejected.Add(1, tags);
    }

    /// <summary>The error.type of a refusal: from its reason, and for a stage's refusal from the stage it names.</summary>
    public static string ErrorType(ClosedConnection refused) => (refused.Reason, refused.Detail) switch
    {
        (CloseReason.ServerBusy, _) => "busy",
        (_, { } d) when d.StartsWith("proxy", StringComparison.Ordinal) => "proxy_header",
        (_, { } d) when d.StartsWith("tls", StringComparison.Ordinal) => "tls_handshake",
        (_, { } d) when d.Contains("--max-per-address", StringComparison.Ordinal) => "per_address_limit",
        _ => "denied",
    };

    private static string ReasonName(CloseReason reason) => reason switch
    {
        CloseReason.PeerClosed => "peer_closed",
        CloseReason.PeerReset => "peer_reset",
        CloseReason.ServerShutdown => "server_shutdown",
        CloseReason.ShutdownTimeout => "shutdown_timeout",
        CloseReason.IdleTimeout => "idle_timeout",
        CloseReason.SendTimeout => "send_timeout",
        CloseReason.ServerBusy => "server_busy",
        CloseReason.Refused => "refused",
        _ => "error",
    };

    private static TagList Peer(EndPoint? peer) => peer switch
    {
        IPEndPoint ip => new TagList
        {
            { "network.transport", "tcp" },
            { "network.type", ip.Address.IsIPv4MappedToIPv6 || ip.AddressFamily == AddressFamily.InterNetwork ? "ipv4" : "ipv6" },
        },
        _ => new TagList { { "network.transport", "unix" } },
    };

    public void Dispose() => _meter.Dispose();
}

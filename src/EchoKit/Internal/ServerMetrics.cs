using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;

namespace EchoKit.Internal;

/// <summary>
/// The server's instruments (meter <c>EchoKit</c>), named after Kestrel's connection metrics and the OpenTelemetry
/// semantic conventions. Everything is recorded per connection (at accept, refusal and close), never per message:
/// the echo path does not know the meter exists. Attributes: <c>network.transport</c> (tcp, unix) and
/// <c>network.type</c> (ipv4, ipv6) of the peer; <c>echokit.close_reason</c> on closes, <c>error.type</c> on
/// refusals (busy, denied, per_address_limit, proxy_header, tls_handshake).
/// </summary>
internal sealed class ServerMetrics : IDisposable
{
    public const string MeterName = "EchoKit";

    private readonly Meter _meter = new(MeterName, typeof(ServerMetrics).Assembly.GetName().Version?.ToString(3));

    public Meter Meter => _meter;
    private readonly Histogram<double> _duration;
    private readonly Counter<long> _closed;
    private readonly Counter<long> _rejected;
    private long _bytesIn;
    private long _bytesOut;

    public ServerMetrics(Func<int> activeConnections)
    {
        _meter.CreateObservableUpDownCounter("echokit.active_connections", activeConnections, "{connection}", "Connections open now");
        _duration = _meter.CreateHistogram("echokit.connection.duration", "s", "How long connections lasted, from accept to close",
            tags: null, new InstrumentAdvice<double> { HistogramBucketBoundaries = [0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600] });
        _closed = _meter.CreateCounter<long>("echokit.closed_connections", "{connection}", "Connections closed, by reason");
        _rejected = _meter.CreateCounter<long>("echokit.rejected_connections", "{connection}", "Connections refused, by error.type");
        _meter.CreateObservableCounter("echokit.bytes_received", () => Volatile.Read(ref _bytesIn), "By", "Bytes received on stream connections (counted as each closes)");
        _meter.CreateObservableCounter("echokit.bytes_sent", () => Volatile.Read(ref _bytesOut), "By", "Bytes sent on stream connections (counted as each closes)");
    }

    /// <summary>A connection that was served has closed.</summary>
    public void Closed(ClosedConnection closed)
    {
        var tags = Peer(closed.Peer);
        tags.Add("echokit.close_reason", ReasonName(closed.Reason));
        _closed.Add(1, tags);
        _duration.Record(closed.Duration.TotalSeconds, tags);
        Interlocked.Add(ref _bytesIn, closed.BytesIn);
        Interlocked.Add(ref _bytesOut, closed.BytesOut);
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

using System.Net;
using System.Net.Sockets;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;

namespace EchoKit.Cli;

/// <summary>
/// <c>serve --metrics ADDR:PORT</c>: the server's meter (<c>EchoKit</c>) exposed for Prometheus at
/// <c>/metrics</c> by OpenTelemetry's Prometheus exporter on an HttpListener of its own, so a scrape never
/// competes with the echo port's connection limit. Names follow the exporter's mapping:
/// <c>echokit.active_connections</c> is <c>echokit_active_connections</c>.
/// </summary>
internal sealed class MetricsEndpoint : IDisposable
{
    private readonly MeterProvider _provider;

    private MetricsEndpoint(MeterProvider provider, string url)
    {
        _provider = provider;
        Url = url;
    }

    public string Url { get; }

    /// <summary>The endpoint listening, or null with the one-line reason it could not.</summary>
    public static MetricsEndpoint? Start(IPEndPoint at, out string? error)
    {
        error = null;
        if (PortTaken(at) is { } taken)
        {
            error = taken;
            return null;
        }

        string host = at.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{at.Address}]" : at.Address.ToString();
        if (at.Address.Equals(IPAddress.Any) || at.Address.Equals(IPAddress.IPv6Any))
        {
            host = "+"; // every address
        }

        try
        {
            var provider = Sdk.CreateMeterProviderBuilder()
                .ConfigureResource(r => r.AddService("echokit"))
                .AddMeter(Internal.ServerMetrics.MeterName)
                .AddPrometheusHttpListener(o =>
                {
                    o.Host = host;
                    o.Port = at.Port;
                    o.ScrapeEndpointPath = "/metrics";
                })
                .Build();
            return new MetricsEndpoint(provider, $"http://{(host == "+" ? at.Address.ToString() : host)}:{at.Port}/metrics");
        }
        catch (Exception e) when (e is HttpListenerException or InvalidOperationException or SocketException)
        {
            error = $"--metrics {at}: cannot listen: {e.Message}";
            return null;
        }
    }

    /// <summary>
    /// The exporter starts its listener in the background and only logs a failure, so the port is tried here first:
    /// the same bind error as the echo port's, in one line.
    /// </summary>
    private static string? PortTaken(IPEndPoint at)
    {
        using var probe = new Socket(at.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            probe.Bind(at);
            return null;
        }
        catch (SocketException e)
        {
            var (errno, text) = SocketErrorText.Of(e.SocketErrorCode);
            return $"--metrics: bind failed: {text} ({errno}) on {at}";
        }
    }

    public void Dispose() => _provider.Dispose();

    /// <summary>
    /// Standard OpenTelemetry export: with <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> (or <c>…_METRICS_ENDPOINT</c>) set, the
    /// meter is pushed there by the OTLP exporter, which reads the other <c>OTEL_*</c> variables itself (protocol,
    /// headers, <c>OTEL_METRIC_EXPORT_INTERVAL</c>). Null when neither is set; a collector that is down costs a
    /// failed export now and then, never the server.
    /// </summary>
    public static (IDisposable? Exporter, string? Description, string? Error) StartOtlp()
    {
        string? endpoint = Environment.GetEnvironmentVariable("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") is { Length: > 0 } metrics ? metrics
            : Environment.GetEnvironmentVariable("OTEL_EXPORTER_OTLP_ENDPOINT") is { Length: > 0 } all ? all : null;
        if (endpoint is null)
        {
            return (null, null, null);
        }

        if (!Uri.TryCreate(endpoint, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
        {
            return (null, null, $"OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: not an http:// or https:// URL");
        }

        try
        {
            var provider = Sdk.CreateMeterProviderBuilder()
                .ConfigureResource(r => r.AddService("echokit"))
                .AddMeter(Internal.ServerMetrics.MeterName)
                .AddOtlpExporter()
                .Build();
            string protocol = Environment.GetEnvironmentVariable("OTEL_EXPORTER_OTLP_PROTOCOL") is { Length: > 0 } p ? p : "grpc";
            return (provider, $"exporting metrics over OTLP ({protocol}) to {endpoint}", null);
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or NotSupportedException)
        {
            return (null, null, $"OTLP export: {e.Message}");
        }
    }
}

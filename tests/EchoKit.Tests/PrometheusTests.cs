using System.Net;
using System.Globalization;
using System.Net.Http;
using System.Text.Json;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// serve --metrics: the scrape endpoint read as text, checked by promtool, and scraped by a real Prometheus
/// server (Debian's package, a config written by the test) whose query API then has the server's numbers.
/// </summary>
public sealed class PrometheusTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("echokit-prometheus-");

    public void Dispose() => _dir.Delete(recursive: true);

    private static async Task<string> GetAsync(string url)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        return await http.GetStringAsync(new Uri(url));
    }

    [Fact]
    public async Task The_metrics_endpoint_passes_promtool_and_a_real_prometheus_scrapes_it()
    {
        Assert.SkipUnless(File.Exists("/usr/bin/prometheus") && File.Exists("/usr/bin/promtool"), "prometheus is not installed (.ci/run installs it)");
        int metricsPort = FreePort();
        var server = ChildProcess.Start("serve", "--port", "0", "--quiet", "--metrics", $"127.0.0.1:{metricsPort}");
        await using (server)
        {
            await server.WaitForStderrAsync("ready: serving", Deadline); // after the metrics listener, too
            var lines = server.StandardErrorText.Split('\n');
            Assert.Contains(lines, l => l.Contains($"listening on http://127.0.0.1:{metricsPort}/metrics (Prometheus metrics)", StringComparison.Ordinal));
            int port = ChildProcess.PortOf(lines.First(l => l.Contains("listening on [", StringComparison.Ordinal)));
            using var held = await ConnectAsync(port); // one connection open while Prometheus looks
            await ReceiveExactlyAsync(held, GreetingBytes.Length);

            string text = await GetAsync($"http://127.0.0.1:{metricsPort}/metrics");
            Assert.Contains("echokit_active_connections{", text, StringComparison.Ordinal);
            var check = await ChildProcess.RunProgramAsync("promtool", TimeSpan.FromSeconds(20), System.Text.Encoding.UTF8.GetBytes(text), "check", "metrics");
            Assert.True(check.ExitCode == 0, $"promtool: {check}\n{check.StdoutText}");

            int prometheusPort = FreePort();
            string config = Path.Combine(_dir.FullName, "prometheus.yml");
            File.WriteAllText(config, string.Create(CultureInfo.InvariantCulture, $"""
                global:
                  scrape_interval: 1s
                scrape_configs:
                  - job_name: echokit
                    static_configs:
                      - targets: ['127.0.0.1:{metricsPort}']

                """));
            await using var prometheus = ChildProcess.StartProgram("/usr/bin/prometheus", $"--config.file={config}",
                $"--storage.tsdb.path={Path.Combine(_dir.FullName, "data")}", $"--web.listen-address=127.0.0.1:{prometheusPort}");
            string query = $"http://127.0.0.1:{prometheusPort}/api/v1/query?query=echokit_active_connections";
            string? answer = null;
            await ProcStats.WaitUntilAsync(() =>
            {
                try
                {
                    answer = GetAsync(query).GetAwaiter().GetResult();
                    using var json = JsonDocument.Parse(answer);
                    var result = json.RootElement.GetProperty("data").GetProperty("result");
                    return result.GetArrayLength() == 1 && result[0].GetProperty("value")[1].GetString() == "1";
                }
                catch (Exception e) when (e is HttpRequestException or TaskCanceledException or JsonException or KeyNotFoundException)
                {
                    return false; // Prometheus not up yet, or no scrape yet
                }
            }, TimeSpan.FromSeconds(30), () => $"Prometheus never had echokit_active_connections = 1: {answer}\n{prometheus.StandardErrorText[^Math.Min(2000, prometheus.StandardErrorText.Length)..]}");
            Assert.Contains("\"job\":\"echokit\"", answer, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task TLS_handshakes_datagrams_by_reason_and_the_bytes_of_open_connections_are_in_the_scrape()
    {
        int metricsPort = FreePort();
        var server = ChildProcess.Start("serve", "--port", "0", "--bind", "127.0.0.1", "--quiet", "--tcp", "--udp", "--max-datagram", "10",
            "--tls-self-signed", "--tls-port", "0", "--metrics", metricsPort.ToString(CultureInfo.InvariantCulture));
        await using (server)
        {
            await server.WaitForStderrAsync("ready: serving", Deadline);
            var listening = server.StandardErrorText.Split('\n').Where(l => l.Contains("listening on 127.0.0.1:", StringComparison.Ordinal)).ToList();
            int port = ChildProcess.PortOf(listening.First(l => !l.Contains("TLS", StringComparison.Ordinal)));
            int tlsPort = ChildProcess.PortOf(listening.First(l => l.Contains("TLS", StringComparison.Ordinal)));

            using (var tcp = await ConnectAsync(tlsPort))
            await using (var tls = new System.Net.Security.SslStream(new System.Net.Sockets.NetworkStream(tcp), false, (_, _, _, _) => true))
            {
                await tls.AuthenticateAsClientAsync("localhost");
                await tls.ReadExactlyAsync(new byte[GreetingBytes.Length]);
            }

            using (var udp = UdpTests.UdpClient(System.Net.IPAddress.Loopback))
            {
                var to = new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, port);
                await udp.SendToAsync("hi"u8.ToArray(), to);
                Assert.NotNull(await UdpTests.ReceiveDatagramAsync(udp, TimeSpan.FromSeconds(5)));
                await udp.SendToAsync(new byte[11], to); // over --max-datagram: dropped
            }

            using var open = await ConnectAsync(port);
            await ReceiveExactlyAsync(open, GreetingBytes.Length);
            await open.SendAsync(new byte[1000]);
            await ReceiveExactlyAsync(open, 1000);

            string text = "";
            await ProcStats.WaitUntilAsync(() =>
            {
                text = GetAsync($"http://127.0.0.1:{metricsPort}/metrics").GetAwaiter().GetResult();
                return text.Contains("echokit_datagrams_dropped_total{", StringComparison.Ordinal) && Value(text, "echokit_datagrams_dropped_total", "echokit_drop_reason=\"oversize\"") == 1;
            }, Deadline, () => text);

            Assert.Equal(1, Value(text, "echokit_tls_handshake_duration_seconds_count", "tls_protocol_version=\"1.3\""));
            Assert.Equal(1, Value(text, "echokit_datagrams_echoed_total", "network_transport=\"udp\""));
            Assert.InRange(Value(text, "echokit_bytes_received_bytes_total", ""), 1000, 1100); // the open connection's 1000 bytes, before it closes
            var check = await ChildProcess.RunProgramAsync("promtool", TimeSpan.FromSeconds(20), System.Text.Encoding.UTF8.GetBytes(text), "check", "metrics");
            Assert.True(check.ExitCode == 0, $"promtool: {check}\n{check.StdoutText}");
        }

        static double Value(string text, string name, string label) => double.Parse(
            text.Split('\n').Single(l => l.StartsWith(name + "{", StringComparison.Ordinal) && l.Contains(label, StringComparison.Ordinal)).Split(' ')[^1],
            CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task With_OTEL_EXPORTER_OTLP_ENDPOINT_the_metrics_are_pushed_over_OTLP()
    {
        // A collector of our own: the OTLP/HTTP receiver's one endpoint, taking protobuf.
        int collectorPort = FreePort();
        using var collector = new HttpListener();
        collector.Prefixes.Add($"http://127.0.0.1:{collectorPort}/");
        collector.Start();
        var received = new TaskCompletionSource<(string Path, string ContentType, byte[] Body)>(TaskCreationOptions.RunContinuationsAsynchronously);
        _ = Task.Run(async () =>
        {
            while (!received.Task.IsCompleted)
            {
                var context = await collector.GetContextAsync();
                using var body = new MemoryStream();
                await context.Request.InputStream.CopyToAsync(body);
                context.Response.StatusCode = 200;
                context.Response.Close();
                received.TrySetResult((context.Request.Url!.AbsolutePath, context.Request.ContentType ?? "", body.ToArray()));
            }
        });

        string[] command = ChildProcess.Echokit("serve", "--port", "0", "--quiet");
        await using var server = ChildProcess.StartProgram("env", [$"OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{collectorPort}",
            "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf", "OTEL_METRIC_EXPORT_INTERVAL=200", .. command]);
        await server.WaitForStderrAsync("ready: serving", Deadline);
        Assert.Contains($"exporting metrics over OTLP (http/protobuf) to http://127.0.0.1:{collectorPort}", server.StandardErrorText, StringComparison.Ordinal);

        var (path, contentType, bytes) = await received.Task.WaitAsync(Deadline);
        Assert.Equal("/v1/metrics", path);
        Assert.Equal("application/x-protobuf", contentType);
        string text = System.Text.Encoding.UTF8.GetString(bytes); // protobuf keeps strings as UTF-8
        Assert.Contains("echokit.active_connections", text, StringComparison.Ordinal);
        Assert.Contains("service.name", text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Dotnet_counters_shows_the_EchoKit_meter()
    {
        string tool = Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".dotnet", "tools", "dotnet-counters");
        Assert.SkipUnless(File.Exists(tool), "dotnet-counters is not installed (.ci/run installs it: dotnet tool install -g dotnet-counters)");
        var (server, port) = await ChildProcess.StartServerAsync("--quiet");
        await using (server)
        {
            using var held = await ConnectAsync(port);
            await ReceiveExactlyAsync(held, GreetingBytes.Length);
            string csv = Path.Combine(_dir.FullName, "counters.csv");
            var collect = await ChildProcess.RunProgramAsync(tool, TimeSpan.FromSeconds(60), null,
                "collect", "-p", server.Pid.ToString(CultureInfo.InvariantCulture), "--counters", "EchoKit", "--format", "csv", "-o", csv, "--duration", "00:00:03");
            Assert.True(collect.ExitCode == 0, collect.ToString() + collect.StdoutText);
            Assert.Contains(File.ReadAllLines(csv), l => l.Contains(",EchoKit,echokit.active_connections", StringComparison.Ordinal) && l.EndsWith(",1", StringComparison.Ordinal));
        }
    }

    [Theory]
    [InlineData("nowhere")]
    [InlineData("127.0.0.1")]
    [InlineData("127.0.0.1:99999")]
    public Task A_bad_metrics_address_is_a_usage_error(string value) =>
        ServeProcessTests.AssertUsageErrorAsync($"invalid --metrics value '{value}': expected ADDR:PORT", "serve", "--metrics", value);

    [Fact]
    public async Task A_metrics_port_in_use_is_one_line_and_exit_3()
    {
        using var holder = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        holder.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        holder.Listen();
        int taken = ((System.Net.IPEndPoint)holder.LocalEndPoint!).Port;
        var result = await ChildProcess.RunAsync(TimeSpan.FromSeconds(20), null, "serve", "--port", "0", "--metrics", $"127.0.0.1:{taken}");
        Assert.Equal(3, result.ExitCode);
        Assert.Contains($"echokit: --metrics: bind failed: Address already in use (EADDRINUSE) on 127.0.0.1:{taken}", result.Stderr, StringComparison.Ordinal);
    }
}

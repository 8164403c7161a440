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

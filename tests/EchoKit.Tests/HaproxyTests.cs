using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// HAProxy 2.6 and nginx stream (the Debian packages, in the foreground) in front of <c>serve --proxy-protocol</c>:
/// the real client behind them.
/// </summary>
public sealed class HaproxyTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("echokit-haproxy-");

    public void Dispose() => _dir.Delete(recursive: true);

    [Theory]
    [InlineData("send-proxy-v2")]
    [InlineData("send-proxy")]
    public async Task Echo_through_haproxy_logs_the_real_client_and_health_checks_are_answered(string sendProxy)
    {
        Assert.SkipUnless(File.Exists("/usr/sbin/haproxy"), "haproxy is not installed (.ci/run installs it)");
        var (server, port) = await ChildProcess.StartServerAsync("--proxy-protocol", "--proxy-from", "127.0.0.1/32");
        await using (server)
        {
            int front = FreePort();
            string config = Path.Combine(_dir.FullName, "haproxy.cfg");
            File.WriteAllText(config, string.Create(CultureInfo.InvariantCulture, $"""
                global
                    maxconn 100
                defaults
                    mode tcp
                    timeout connect 2s
                    timeout client 10s
                    timeout server 10s
                frontend echo
                    bind 127.0.0.1:{front}
                    default_backend echokit
                backend echokit
                    server e1 127.0.0.1:{port} {sendProxy} check check-send-proxy inter 200ms

                """));
            await using var haproxy = ChildProcess.StartProgram("/usr/sbin/haproxy", "-db", "-f", config);
            await WaitUntilListeningQuietlyAsync(front, Deadline);

            int clientPort = await EchoThroughAsync("127.0.0.3", front, "through haproxy\n"u8.ToArray());
            await server.WaitForStderrAsync($"from 127.0.0.3:{clientPort} closed: closed by peer", Deadline);
            Assert.Matches($@"connection \d+: client 127\.0\.0\.3:{clientPort} \(PROXY header from 127\.0\.0\.1:\d+\)", server.StandardErrorText);
            await ProcStats.WaitUntilAsync(() => server.StandardErrorText.Split('\n').Count(l => l.Contains("from 127.0.0.1:", StringComparison.Ordinal) && l.Contains(" closed: ", StringComparison.Ordinal)) >= 2,
                Deadline, () => "no health check reached the server: " + server.StandardErrorText);
            Assert.DoesNotContain("refused: proxy", server.StandardErrorText, StringComparison.Ordinal);
        }
    }

    /// <summary>
    /// Two instances behind HAProxy (send-proxy-v2, check-send-proxy, redispatch); a client reconnecting all the
    /// time; one instance gets SIGTERM: the client sees no error. What could fail: a connection HAProxy has
    /// completed to the instance's backlog, reset when the listener closes (HAProxy cannot retry it in TCP mode;
    /// it logs SD). The stopping server starts no new handshake and serves its backlog before closing.
    /// </summary>
    [Fact]
    public async Task One_of_two_instances_behind_haproxy_stops_and_a_reconnecting_client_sees_no_error()
    {
        Assert.SkipUnless(File.Exists("/usr/sbin/haproxy"), "haproxy is not installed (.ci/run installs it)");
        string echokit = ChildProcess.EchokitForShell();
        string d = _dir.FullName;
        int front = FreePort(), first = FreePort(), second = FreePort();
        File.WriteAllText(Path.Combine(d, "haproxy.cfg"), string.Create(CultureInfo.InvariantCulture, $"""
            global
                maxconn 1000
                log stdout format raw local0
            defaults
                mode tcp
                log global
                option tcplog
                option redispatch 1
                retries 3
                timeout connect 2s
                timeout client 10s
                timeout server 10s
            frontend echo
                bind 127.0.0.1:{front}
                default_backend echokit
            backend echokit
                server e1 127.0.0.1:{first} send-proxy-v2 check check-send-proxy inter 200ms
                server e2 127.0.0.1:{second} send-proxy-v2 check check-send-proxy inter 200ms

            """));
        string script = $$"""
            set -u
            E="{{echokit}}"
            wait_for() { for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timed out waiting for '$2' in $1"; cat "$1"; exit 1; }
            serve() { eval "exec $E serve --port $1 --proxy-protocol --proxy-from 127.0.0.1/32 --quiet"; }
            serve {{first}} 2>{{d}}/e1.err &
            e1=$!
            serve {{second}} 2>{{d}}/e2.err &
            e2=$!
            wait_for {{d}}/e1.err "ready: serving"
            wait_for {{d}}/e2.err "ready: serving"
            exec /usr/sbin/haproxy -db -f {{d}}/haproxy.cfg >{{d}}/haproxy.log 2>&1 &
            ha=$!
            trap 'kill -TERM $ha $e2 2>/dev/null; kill -TERM $e1 2>/dev/null' EXIT
            wait_for {{d}}/e1.err "from 127.0.0.1:.* closed"
            wait_for {{d}}/e2.err "from 127.0.0.1:.* closed"
            eval "exec $E bench 127.0.0.1:{{front}} --reconnect -c 8 -t 3s --warmup 0 --json" >{{d}}/bench.json 2>{{d}}/bench.err &
            bench=$!
            wait_for {{d}}/bench.err "t=1s"
            kill -TERM $e1
            wait $e1; echo "e1_rc=$?"
            wait $bench; echo "bench_rc=$?"
            """;
        var result = await ChildProcess.RunProgramAsync("bash", TimeSpan.FromSeconds(60), null, "-c", script);
        string report = $"{result.StdoutText}\n{result.Stderr}\ne1: {Tail("e1.err")}\ne2: {Tail("e2.err")}\nbench: {Read("bench.err")}\nhaproxy (not normal): "
            + string.Join('\n', Read("haproxy.log").Split('\n').Where(l => l.Contains(" SD ", StringComparison.Ordinal) || l.Contains(" sC ", StringComparison.Ordinal) || l.Contains(" CC ", StringComparison.Ordinal)));
        Assert.True(result.StdoutText.Contains("e1_rc=0", StringComparison.Ordinal) && result.StdoutText.Contains("bench_rc=0", StringComparison.Ordinal), report);
        using var json = JsonDocument.Parse(Read("bench.json"));
        Assert.True(json.RootElement.GetProperty("msgs").GetInt64() > 100, report);
        Assert.True(json.RootElement.GetProperty("errors").GetInt64() == 0, report);
        Assert.True(json.RootElement.GetProperty("mismatches").GetInt64() == 0, report);
        Assert.Contains("shutting down", Read("e1.err"), StringComparison.Ordinal);
    }

    /// <summary>A client from <paramref name="source"/> through the balancer: greeting, one echo, our FIN, the server's. Its port.</summary>
    private static async Task<int> EchoThroughAsync(string source, int front, byte[] message)
    {
        using var client = await ConnectFromAsync(source, front);
        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
        await client.SendAsync(message);
        Assert.Equal(message, await ReceiveExactlyAsync(client, message.Length));
        int port = ((IPEndPoint)client.LocalEndPoint!).Port;
        client.Shutdown(SocketShutdown.Send);
        await ReceiveToEndAsync(client);
        return port;
    }

    private string Read(string name) => File.Exists(Path.Combine(_dir.FullName, name)) ? File.ReadAllText(Path.Combine(_dir.FullName, name)) : "";

    private string Tail(string name) => string.Join('\n', Read(name).Split('\n').TakeLast(15));

    [Fact]
    public async Task Echo_through_nginx_stream_with_proxy_protocol_on_logs_the_real_client()
    {
        const string module = "/usr/lib/nginx/modules/ngx_stream_module.so";
        Assert.SkipUnless(File.Exists("/usr/sbin/nginx") && File.Exists(module), "nginx with the stream module is not installed (.ci/run installs it)");
        var (server, port) = await ChildProcess.StartServerAsync("--proxy-protocol", "--proxy-from", "127.0.0.1/32");
        await using (server)
        {
            int front = FreePort();
            string config = Path.Combine(_dir.FullName, "nginx.conf");
            File.WriteAllText(config, string.Create(CultureInfo.InvariantCulture, $$"""
                load_module {{module}};
                daemon off;
                master_process off;
                pid {{_dir.FullName}}/nginx.pid;
                error_log stderr warn;
                events { worker_connections 64; }
                stream {
                    server {
                        listen 127.0.0.1:{{front}};
                        proxy_pass 127.0.0.1:{{port}};
                        proxy_protocol on;
                    }
                }

                """));
            await using var nginx = ChildProcess.StartProgram("/usr/sbin/nginx", "-c", config, "-p", _dir.FullName, "-e", "stderr");
            await WaitUntilListeningQuietlyAsync(front, Deadline);

            int clientPort = await EchoThroughAsync("127.0.0.4", front, "through nginx\n"u8.ToArray());
            await server.WaitForStderrAsync($"from 127.0.0.4:{clientPort} closed: closed by peer", Deadline);
        }
    }
}

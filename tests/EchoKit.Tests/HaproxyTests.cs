using System.Globalization;
using System.Net;
using System.Net.Sockets;
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

            using var client = await ConnectFromAsync("127.0.0.3", front);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            await client.SendAsync("through haproxy\n"u8.ToArray());
            Assert.Equal("through haproxy\n"u8.ToArray(), await ReceiveExactlyAsync(client, 16));
            int clientPort = ((IPEndPoint)client.LocalEndPoint!).Port;
            client.Shutdown(SocketShutdown.Send);
            await ReceiveToEndAsync(client);

            await server.WaitForStderrAsync($"from 127.0.0.3:{clientPort} closed: closed by peer", Deadline);
            await ProcStats.WaitUntilAsync(() => server.StandardErrorText.Split('\n').Count(l => l.Contains("from 127.0.0.1:", StringComparison.Ordinal) && l.Contains(" closed: ", StringComparison.Ordinal)) >= 2,
                Deadline, () => "no health check reached the server: " + server.StandardErrorText);
            Assert.DoesNotContain("refused: proxy", server.StandardErrorText, StringComparison.Ordinal);
        }
    }

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

            using var client = await ConnectFromAsync("127.0.0.4", front);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            await client.SendAsync("through nginx\n"u8.ToArray());
            Assert.Equal("through nginx\n"u8.ToArray(), await ReceiveExactlyAsync(client, 14));
            int clientPort = ((IPEndPoint)client.LocalEndPoint!).Port;
            client.Shutdown(SocketShutdown.Send);
            await ReceiveToEndAsync(client);
            await server.WaitForStderrAsync($"from 127.0.0.4:{clientPort} closed: closed by peer", Deadline);
        }
    }
}

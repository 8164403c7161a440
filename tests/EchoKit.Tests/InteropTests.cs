using System.Text;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// Third-party programs against EchoKit and EchoKit against third-party servers:
/// nc and socat as clients of our server; our client against socat+cat and a web server.
/// .ci/run installs netcat-openbsd, socat and python3.
/// </summary>
public sealed class InteropTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(30);

    private static string Text(int port) => port.ToString(System.Globalization.CultureInfo.InvariantCulture);

    [Fact]
    public async Task nc_gets_the_greeting_and_its_bytes_back()
    {
        var (server, port) = await ChildProcess.StartServerAsync();
        await using (server)
        {
            byte[] sent = [.. "hello from nc\n"u8.ToArray(), 0, 0xFF, 0xFD, 0x01];
            var nc = await ChildProcess.RunProgramAsync("nc", ExitDeadline, sent, "-N", "127.0.0.1", Text(port));
            Assert.Equal(0, nc.ExitCode);
            Assert.Equal([.. GreetingBytes, .. sent], nc.Stdout);

            await server.WaitForStderrAsync("closed: closed by peer", Deadline);
            // stdout is written by its own thread: the bytes may land just after the log line.
            Assert.Equal(sent, await server.WaitForStdoutAsync(sent.Length, Deadline));
        }
    }

    [Fact]
    public async Task nc_over_IPv6_is_served_by_the_dual_stack_listener()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--no-greeting");
        await using (server)
        {
            var nc = await ChildProcess.RunProgramAsync("nc", ExitDeadline, "six\n"u8.ToArray(), "-N", "::1", Text(port));
            Assert.Equal(0, nc.ExitCode);
            Assert.Equal("six\n", nc.StdoutText);
            await server.WaitForStderrAsync("accepted from [::1]:", Deadline);
        }
    }

    [Fact]
    public async Task socat_gets_the_greeting_and_a_large_binary_payload_back()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet");
        await using (server)
        {
            var payload = new byte[256 * 1024];
            Random.Shared.NextBytes(payload);
            // -t 10: after stdin EOF socat half-closes and keeps reading (up to 10 s) until our FIN.
            var socat = await ChildProcess.RunProgramAsync("socat", ExitDeadline, payload, "-t", "10", "-", $"TCP:127.0.0.1:{port}");
            Assert.Equal(0, socat.ExitCode);
            Assert.Equal([.. GreetingBytes, .. payload], socat.Stdout);
        }
    }

    [Fact]
    public async Task Our_client_talks_to_socat_running_cat_one_shot_and_interactive()
    {
        int port = FreePort();
        await using var socat = ChildProcess.StartProgram("socat", $"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", "EXEC:cat");
        await WaitUntilListeningAsync(port, Deadline);

        var oneShot = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "127.0.0.1", Text(port), "--send", "via socat\\n", "--expect", "10");
        Assert.Equal(0, oneShot.ExitCode);
        Assert.Equal("via socat\n", oneShot.StdoutText);

        var payload = Encoding.ASCII.GetBytes(string.Join('\n', Enumerable.Range(0, 2000).Select(i => $"line {i}")) + "\n");
        var interactive = await ChildProcess.RunAsync(ExitDeadline, payload, "connect", "127.0.0.1", Text(port));
        Assert.Equal(0, interactive.ExitCode);
        Assert.Equal(payload, interactive.Stdout);
    }

    [Fact]
    public async Task Our_client_fetches_a_page_from_a_web_server_like_the_classic_C_client()
    {
        var root = Directory.CreateTempSubdirectory("echokit-web-");
        try
        {
            await File.WriteAllTextAsync(Path.Combine(root.FullName, "hello.txt"), "hello from the web server\n");
            int port = FreePort();
            await using var web = ChildProcess.StartProgram("python3", "-m", "http.server", Text(port), "--bind", "127.0.0.1", "--directory", root.FullName);
            await WaitUntilListeningAsync(port, Deadline);

            var result = await ChildProcess.RunAsync(ExitDeadline, null,
                "connect", "127.0.0.1", Text(port), "--send", "GET /hello.txt HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n");
            Assert.Equal(0, result.ExitCode);
            Assert.Matches(@"^HTTP/1\.[01] 200 OK\r\n", result.StdoutText);
            Assert.EndsWith("\r\n\r\nhello from the web server\n", result.StdoutText, StringComparison.Ordinal);
        }
        finally
        {
            root.Delete(recursive: true);
        }
    }
}

using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary><c>echokit serve --unix</c> and <c>echokit connect --unix</c>: echo, stale and live files, cleanup.</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class UnixSocketTests : IDisposable
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("echokit-unix-");

    private string SocketPath => Path.Combine(_dir.FullName, "echo.sock");

    public void Dispose() => _dir.Delete(recursive: true);

    private static async Task<Socket> ConnectUnixAsync(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(path)).WaitAsync(Deadline);
        return socket;
    }

    private static async Task<ChildProcess> StartUnixServerAsync(params string[] args)
    {
        var server = ChildProcess.Start(["serve", .. args]);
        await server.WaitForStderrAsync("listening on unix:", Deadline);
        return server;
    }

    [Fact]
    public async Task Echo_over_a_Unix_socket_with_our_client_and_nc_then_the_file_is_removed_on_SIGTERM()
    {
        await using var server = await StartUnixServerAsync("--unix", SocketPath, "--unix-mode", "660", "--quiet");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.GroupWrite, File.GetUnixFileMode(SocketPath));

        var ours = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "--unix", SocketPath, "--send", "over unix\\n", "-N");
        Assert.Equal(0, ours.ExitCode);
        Assert.Equal([.. GreetingBytes, .. "over unix\n"u8.ToArray()], ours.Stdout);

        var nc = await ChildProcess.RunProgramAsync("nc", ExitDeadline, "from nc\n"u8.ToArray(), "-N", "-U", SocketPath);
        Assert.Equal([.. GreetingBytes, .. "from nc\n"u8.ToArray()], nc.Stdout);

        using (var client = await ConnectUnixAsync(SocketPath))
        {
            await ReceiveExactlyAsync(client, GreetingBytes.Length);
            var payload = ServeProcessTests.RandomBytes(1 << 20);
            var send = client.SendAsync(payload);
            Assert.Equal(payload, await ReceiveExactlyAsync(client, payload.Length));
            await send;
        }

        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        Assert.False(File.Exists(SocketPath), "the socket file is still there after shutdown");
    }

    [Fact]
    public async Task A_stale_socket_file_left_by_a_crashed_server_is_replaced()
    {
        // A process that binds and exits without unlinking, as a crashed server does (.NET's own Socket
        // removes the file when disposed, so python3 plays the crashed server).
        var crashed = await ChildProcess.RunProgramAsync("python3", ExitDeadline, null,
            "-c", "import socket, sys; socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(sys.argv[1])", SocketPath);
        Assert.Equal(0, crashed.ExitCode);
        Assert.True(File.Exists(SocketPath));
        await using var server = await StartUnixServerAsync("--unix", SocketPath, "--quiet");
        using var client = await ConnectUnixAsync(SocketPath);
        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
    }

    [Fact]
    public async Task A_live_socket_file_is_refused_and_its_server_keeps_working()
    {
        await using var first = await StartUnixServerAsync("--unix", SocketPath, "--quiet");
        var second = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--unix", SocketPath);
        Assert.Equal(3, second.ExitCode);
        Assert.Contains($"bind failed: Address already in use (EADDRINUSE) on unix:{SocketPath}; a server is listening", second.Stderr, StringComparison.Ordinal);

        using var client = await ConnectUnixAsync(SocketPath);
        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
    }

    [Fact]
    public async Task A_path_that_is_not_a_socket_is_never_deleted()
    {
        await File.WriteAllTextAsync(SocketPath, "precious");
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--unix", SocketPath);
        Assert.Equal(3, result.ExitCode);
        Assert.Contains("exists and is not a socket", result.Stderr, StringComparison.Ordinal);
        Assert.Equal("precious", await File.ReadAllTextAsync(SocketPath));
    }

    [Fact]
    public async Task Connecting_to_a_missing_socket_file_says_so()
    {
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "--unix", SocketPath, "--send", "x");
        Assert.NotEqual(0, result.ExitCode);
        Assert.Equal($"echokit: connect to unix:{SocketPath} failed: No such file or directory (ENOENT)", result.Stderr.Trim());
    }

    [Fact]
    public async Task Bench_loads_a_Unix_socket_the_same_way_as_TCP()
    {
        await using var server = await StartUnixServerAsync("--unix", SocketPath, "--quiet");
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", "--unix", SocketPath, "-c", "4", "-t", "1s", "--warmup", "200ms", "--json");
        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = System.Text.Json.JsonDocument.Parse(result.StdoutText);
        Assert.True(json.RootElement.GetProperty("msgs").GetInt64() > 100, result.StdoutText);
        Assert.Equal(0, json.RootElement.GetProperty("mismatches").GetInt64());
    }

    [Theory]
    [InlineData("give either a HOST[:PORT] target or --unix PATH", "bench")]
    [InlineData("invalid --unix-mode value '999'", "serve", "--unix", "/tmp/x.sock", "--unix-mode", "999")]
    [InlineData("--unix-mode needs --unix", "serve", "--unix-mode", "600")]
    [InlineData("--unix and --bind cannot be combined", "serve", "--unix", "/tmp/x.sock", "--bind", "::1")]
    [InlineData("give either HOST [PORT] or --unix PATH, not both", "connect", "localhost", "--unix", "/tmp/x.sock")]
    public Task Unix_flags_are_validated(string expected, params string[] args) => ServeProcessTests.AssertUsageErrorAsync(expected, args);
}

using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary><c>--unix</c> for serve, connect and bench, stream and datagram: echo, stale and live files, cleanup.</summary>
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

    private static async Task<ChildProcess> StartUnixDatagramServerAsync(string path, params string[] args)
    {
        var server = ChildProcess.Start(["serve", "--udp", "--unix", path, .. args]);
        await server.WaitForStderrAsync($"listening on unix:{path} (datagram)", Deadline);
        return server;
    }

    /// <summary>A Unix datagram socket bound to a file in the test's folder, so that the server can answer it.</summary>
    private Socket NamedDatagramClient(string name)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        socket.Bind(new UnixDomainSocketEndPoint(Path.Combine(_dir.FullName, name)));
        return socket;
    }

    private static async Task<byte[]?> ReceiveDatagramAsync(Socket socket, int capacity = 1 << 20)
    {
        var buffer = new byte[capacity];
        using var cts = new CancellationTokenSource(Deadline);
        try
        {
            int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
            return buffer.AsSpan(0, n).ToArray();
        }
        catch (OperationCanceledException)
        {
            return null;
        }
    }

    [Fact]
    public async Task Unix_datagrams_are_echoed_to_our_client_nc_and_socat_and_the_file_is_removed_on_SIGTERM()
    {
        await using var server = await StartUnixDatagramServerAsync(SocketPath, "--unix-mode", "600", "--quiet");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(SocketPath));

        var ours = await ChildProcess.RunAsync(ExitDeadline, "one\ntwo\n"u8.ToArray(), "connect", "--udp", "--unix", SocketPath);
        Assert.True(ours.ExitCode == 0, ours.ToString());
        Assert.Equal("one\ntwo\n", ours.StdoutText);
        Assert.Contains("2 of 2 datagrams answered", ours.Stderr, StringComparison.Ordinal);

        var nc = await ChildProcess.RunProgramAsync("nc", ExitDeadline, "from nc\n"u8.ToArray(), "-u", "-U", "-w", "1", SocketPath);
        Assert.Equal("from nc\n", nc.StdoutText);

        string socatClient = Path.Combine(_dir.FullName, "socat-client.sock");
        var socat = await ChildProcess.RunProgramAsync("socat", ExitDeadline, "from socat\n"u8.ToArray(),
            "-t", "1", "-", $"UNIX-SENDTO:{SocketPath},bind={socatClient}");
        Assert.Equal("from socat\n", socat.StdoutText);

        // Binary, and larger than any UDP datagram: a Unix datagram can be.
        using (var client = NamedDatagramClient("big-client.sock"))
        {
            client.SendBufferSize = 1 << 20;
            var payload = ServeProcessTests.RandomBytes(200_000);
            await client.SendToAsync(payload, new UnixDomainSocketEndPoint(SocketPath));
            Assert.Equal(payload, await ReceiveDatagramAsync(client));
        }

        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        Assert.False(File.Exists(SocketPath), "the socket file is still there after shutdown");
    }

    [Fact]
    public async Task An_unbound_sender_cannot_be_answered_and_is_counted_while_named_senders_are_served()
    {
        await using var server = await StartUnixDatagramServerAsync(SocketPath, "--quiet");
        var target = new UnixDomainSocketEndPoint(SocketPath);
        using (var anonymous = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified))
        {
            await anonymous.SendToAsync("nobody to answer"u8.ToArray(), target);
        }

        using var named = NamedDatagramClient("named.sock");
        await named.SendToAsync("answer me"u8.ToArray(), target);
        Assert.Equal("answer me"u8.ToArray(), await ReceiveDatagramAsync(named));
        await server.WaitForStderrAsync("1 dropped from unbound senders", Deadline);
    }

    [Fact]
    public async Task A_datagram_larger_than_max_datagram_is_dropped_and_counted_never_echoed_cut_short()
    {
        await using var server = await StartUnixDatagramServerAsync(SocketPath, "--quiet", "--max-datagram", "1000");
        var target = new UnixDomainSocketEndPoint(SocketPath);
        using var client = NamedDatagramClient("client.sock");
        var exact = ServeProcessTests.RandomBytes(1000);
        await client.SendToAsync(new byte[1001], target);
        await client.SendToAsync(exact, target);
        Assert.Equal(exact, await ReceiveDatagramAsync(client)); // the first reply is the 1000-byte one: 1001 was not echoed
        await server.WaitForStderrAsync("1 dropped as larger than 1000 bytes", Deadline);
    }

    [Fact]
    public async Task A_stale_datagram_socket_file_is_replaced_and_a_live_one_refused()
    {
        var crashed = await ChildProcess.RunProgramAsync("python3", ExitDeadline, null,
            "-c", "import socket, sys; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).bind(sys.argv[1])", SocketPath);
        Assert.Equal(0, crashed.ExitCode);
        Assert.True(File.Exists(SocketPath));

        await using var server = await StartUnixDatagramServerAsync(SocketPath, "--quiet");
        foreach (string[] second in new[] { new[] { "serve", "--udp", "--unix", SocketPath }, new[] { "serve", "--unix", SocketPath } })
        {
            var refused = await ChildProcess.RunAsync(ExitDeadline, null, second);
            Assert.Equal(3, refused.ExitCode);
            Assert.Contains("Address already in use (EADDRINUSE)", refused.Stderr, StringComparison.Ordinal);
        }

        var reply = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "-u", "--unix", SocketPath, "--send", "still mine");
        Assert.Equal("still mine", reply.StdoutText);
    }

    [Fact]
    public async Task Connecting_with_the_wrong_socket_type_says_which_type_it_is()
    {
        await using (var server = await StartUnixDatagramServerAsync(SocketPath, "--quiet"))
        {
            var stream = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "--unix", SocketPath, "--send", "x");
            Assert.Equal(1, stream.ExitCode);
            Assert.Equal($"echokit: connect to unix:{SocketPath} failed: Protocol wrong type for socket (EPROTOTYPE): it is a datagram socket (add --udp)", stream.Stderr.Trim());
        }

        await using (var server = await StartUnixServerAsync("--unix", SocketPath, "--quiet"))
        {
            var datagram = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "--udp", "--unix", SocketPath, "--send", "x");
            Assert.Equal(1, datagram.ExitCode);
            Assert.Contains("it is a stream socket (leave out --udp)", datagram.Stderr, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Bench_udp_loads_a_Unix_datagram_socket()
    {
        await using var server = await StartUnixDatagramServerAsync(SocketPath, "--quiet");
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", "--udp", "--unix", SocketPath, "-c", "2", "-s", "100000", "-t", "1s", "--warmup", "200ms", "--json");
        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = System.Text.Json.JsonDocument.Parse(result.StdoutText);
        Assert.True(json.RootElement.GetProperty("msgs").GetInt64() > 100, result.StdoutText);
        Assert.Equal(0, json.RootElement.GetProperty("mismatches").GetInt64());
        Assert.Equal(0, json.RootElement.GetProperty("errors").GetInt64());
    }

    [Theory]
    [InlineData("give either a HOST[:PORT] target or --unix PATH", "bench")]
    [InlineData("invalid --unix-mode value '999'", "serve", "--unix", "/tmp/x.sock", "--unix-mode", "999")]
    [InlineData("--unix-mode needs --unix", "serve", "--unix-mode", "600")]
    [InlineData("--unix and --bind cannot be combined", "serve", "--unix", "/tmp/x.sock", "--bind", "::1")]
    [InlineData("give either HOST [PORT] or --unix PATH, not both", "connect", "localhost", "--unix", "/tmp/x.sock")]
    [InlineData("a socket file is either a stream (--unix) or a datagram socket (--udp --unix)", "serve", "--tcp", "--udp", "--unix", "/tmp/x.sock")]
    [InlineData("--max-datagram needs --udp", "serve", "--max-datagram", "100")]
    [InlineData("invalid --max-datagram value '0'", "serve", "--udp", "--max-datagram", "0")]
    public Task Unix_flags_are_validated(string expected, params string[] args) => ServeProcessTests.AssertUsageErrorAsync(expected, args);
}

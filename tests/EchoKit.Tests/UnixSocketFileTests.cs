using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// The socket file of <c>--unix</c> when others touch it: files swapped in while the server runs, a live
/// listener with a full backlog, two servers starting at once, the mode from the first instant, bind errors.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class UnixSocketFileTests : IDisposable
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("echokit-file-");

    private string SocketPath => Path.Combine(_dir.FullName, "echo.sock");

    public void Dispose() => _dir.Delete(recursive: true);

    private static async Task<ChildProcess> StartAsync(params string[] args)
    {
        var server = ChildProcess.Start(["serve", .. args]);
        await server.WaitForStderrAsync("listening on unix:", Deadline);
        return server;
    }

    [Theory]
    [InlineData("stream")]
    [InlineData("datagram")]
    public async Task At_exit_a_file_put_at_the_path_meanwhile_is_left_alone(string kind)
    {
        string[] args = kind == "datagram" ? ["--unix", SocketPath, "--udp", "--quiet"] : ["--unix", SocketPath, "--quiet"];
        await using var server = await StartAsync(args);
        File.Delete(SocketPath);
        File.WriteAllText(SocketPath, "someone's data");
        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        Assert.Equal("someone's data", File.ReadAllText(SocketPath));
    }

    [Fact]
    public async Task At_exit_another_servers_live_socket_at_the_path_is_left_alone()
    {
        await using var first = await StartAsync("--unix", SocketPath, "--quiet");
        File.Move(SocketPath, SocketPath + ".first"); // the first server's file moves aside
        await using var second = await StartAsync("--unix", SocketPath, "--quiet");
        first.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await first.WaitForExitAsync(ExitDeadline));

        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await client.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath)).WaitAsync(Deadline); // the second one's, still there
        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
        second.Signal(ChildProcess.SIGTERM);
        client.Dispose();
        Assert.Equal(0, await second.WaitForExitAsync(ExitDeadline));
        Assert.False(File.Exists(SocketPath)); // which the second one removed: it was its own
        Assert.True(File.Exists(SocketPath + ".first")); // never touched: not at the path it bound
    }

    [Fact]
    public async Task A_live_listener_with_a_full_backlog_is_refused_at_once_not_waited_for()
    {
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(SocketPath));
        listener.Listen(0);
        var pending = new List<Socket>();
        try
        {
            while (true) // connect without accepting until the backlog is full
            {
                var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { Blocking = false };
                pending.Add(client);
                client.Connect(new UnixDomainSocketEndPoint(SocketPath));
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.WouldBlock)
        {
            // Full.
        }

        var result = await ChildProcess.RunAsync(TimeSpan.FromSeconds(10), null, "serve", "--unix", SocketPath);
        Assert.Equal(3, result.ExitCode);
        Assert.Contains("Address already in use (EADDRINUSE)", result.Stderr, StringComparison.Ordinal);
        pending.ForEach(s => s.Dispose());
    }

    [Fact]
    public async Task Of_two_servers_started_at_once_on_a_stale_file_one_listens_and_the_other_is_refused()
    {
        for (int round = 0; round < 5; round++)
        {
            // A stale socket file, as a crashed server leaves it.
            using (var stale = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            {
                stale.Bind(new UnixDomainSocketEndPoint(SocketPath));
            }

            await using var a = ChildProcess.Start("serve", "--unix", SocketPath, "--quiet");
            await using var b = ChildProcess.Start("serve", "--unix", SocketPath, "--quiet");
            // One of them listens (the other may already have exited: its wait then fails, which is no answer).
            await ProcStats.WaitUntilAsync(() => a.StandardErrorText.Contains("info: echokit[1] listening on", StringComparison.Ordinal) || b.StandardErrorText.Contains("info: echokit[1] listening on", StringComparison.Ordinal),
                Deadline, () => $"neither listens:\n{a.StandardErrorText}\n{b.StandardErrorText}");
            var (winner, loser) = a.StandardErrorText.Contains("info: echokit[1] listening on", StringComparison.Ordinal) ? (a, b) : (b, a);
            Assert.Equal(3, await loser.WaitForExitAsync(ExitDeadline));
            Assert.Contains("EADDRINUSE", loser.StandardErrorText, StringComparison.Ordinal);

            using (var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            {
                await client.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath)).WaitAsync(Deadline); // the winner's file
                Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            }

            winner.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await winner.WaitForExitAsync(ExitDeadline));
            Assert.False(File.Exists(SocketPath));
        }
    }

    [Fact]
    public async Task The_mode_holds_from_the_moment_the_file_exists_even_under_umask_000()
    {
        await using var server = ChildProcess.StartProgram("bash", ["-c", "umask 000; exec \"$@\"", "echokit", .. ChildProcess.Echokit("serve", "--unix", SocketPath, "--unix-mode", "600", "--quiet")]);
        var seen = new HashSet<UnixFileMode>();
        var until = DateTime.UtcNow + Deadline;
        while (!server.StandardErrorText.Contains("listening", StringComparison.Ordinal) && DateTime.UtcNow < until)
        {
            try
            {
                seen.Add(File.GetUnixFileMode(SocketPath)); // watched from the first instant it appears
            }
            catch (FileNotFoundException)
            {
            }
        }

        seen.Add(File.GetUnixFileMode(SocketPath));
        Assert.Equal([UnixFileMode.UserRead | UnixFileMode.UserWrite], seen);
    }

    [Fact]
    public async Task A_missing_directory_is_ENOENT_and_an_unwritable_one_EACCES_with_Unix_hints()
    {
        var missing = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--unix", Path.Combine(_dir.FullName, "no", "such.sock"));
        Assert.Equal(3, missing.ExitCode);
        Assert.Contains("No such file or directory (ENOENT)", missing.Stderr, StringComparison.Ordinal);
        Assert.Contains("does not exist", missing.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("ip addr", missing.Stderr, StringComparison.Ordinal);

        var readOnly = Directory.CreateDirectory(Path.Combine(_dir.FullName, "ro"));
        File.SetUnixFileMode(readOnly.FullName, UnixFileMode.UserRead | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        File.SetUnixFileMode(_dir.FullName, (UnixFileMode)0x1ED); // 755: others may pass through it to ro/
        var denied = await ChildProcess.RunProgramAsync("setpriv", ExitDeadline, null,
            ["--reuid", "65534", "--regid", "65534", "--clear-groups", .. ChildProcess.Echokit("serve", "--unix", Path.Combine(readOnly.FullName, "x.sock"))]);
        Assert.Equal(3, denied.ExitCode);
        Assert.Contains("Permission denied (EACCES)", denied.Stderr, StringComparison.Ordinal);
        Assert.Contains("may not create files in", denied.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("ports below 1024", denied.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_Unix_datagram_larger_than_the_default_send_buffer_comes_back()
    {
        string path = Path.Combine(_dir.FullName, "dgram.sock");
        await using var server = await StartAsync("--unix", path, "--udp", "--quiet");
        using var client = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        client.Bind(new UnixDomainSocketEndPoint(Path.Combine(_dir.FullName, "client.sock")));
        client.SendBufferSize = 1 << 20; // capped at 2 × wmem_max (425,984 bytes by default)
        client.ReceiveBufferSize = 1 << 20;
        var payload = ServeProcessTests.RandomBytes(300_000); // over the 212,992-byte default
        await client.SendToAsync(payload, new UnixDomainSocketEndPoint(path));
        var buffer = new byte[400_000];
        int n = await client.ReceiveAsync(buffer).WaitAsync(Deadline);
        Assert.Equal(payload, buffer[..n]);
    }
}

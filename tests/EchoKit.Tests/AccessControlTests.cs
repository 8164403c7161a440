using System.Globalization;
using System.Net;
using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// --allow/--deny, --max-per-address and --allow-uid: refused peers get no byte (not even the busy line, for
/// rules), refusals are logged once a second per rule rather than once per connection, datagrams from denied
/// sources are dropped. Sources come from 127.0.0.0/8, which loopback lets any socket bind.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class AccessControlTests : IDisposable
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("echokit-access-");

    public void Dispose() => _dir.Delete(recursive: true);

    [Fact]
    public async Task A_denied_peer_is_closed_before_any_byte_deny_wins_over_allow_and_a_flood_is_logged_once_a_second()
    {
        string rules = Path.Combine(_dir.FullName, "deny.txt");
        File.WriteAllText(rules, "# scanners\n127.0.0.2/32   # one host\n\n10.0.0.0/8\n");
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--allow", "127.0.0.0/8", "--deny-file", rules);
        await using (server)
        {
            for (int i = 0; i < 50; i++)
            {
                using var denied = await ConnectFromAsync("127.0.0.2", port);
                Assert.Empty(await ReceiveToEndAsync(denied)); // closed, no greeting
            }

            using (var allowed = await ConnectFromAsync("127.0.0.3", port))
            {
                Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(allowed, GreetingBytes.Length));
            }

            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            string log = server.StandardErrorText;
            var lines = log.Split('\n').Where(l => l.Contains("access: refused", StringComparison.Ordinal)).ToArray();
            Assert.InRange(lines.Length, 1, 10); // 50 refusals, a line a second at most
            Assert.Contains("by --deny 127.0.0.2/32, the last from 127.0.0.2:", lines[0], StringComparison.Ordinal);
            Assert.DoesNotContain("accepted from 127.0.0.2", log, StringComparison.Ordinal);
            Assert.Contains("accepted from 127.0.0.3", log, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Allow_admits_only_its_ranges_and_ipv4_rules_match_mapped_peers_of_the_dual_stack_socket()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--allow", "127.0.0.5/32");
        await using (server)
        {
            using (var mapped = await ConnectFromAsync("127.0.0.5", port)) // seen as ::ffff:127.0.0.5 by the [::] socket
            {
                Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(mapped, GreetingBytes.Length));
            }

            using var other = await ConnectFromAsync("127.0.0.6", port);
            Assert.Empty(await ReceiveToEndAsync(other));
            await server.WaitForStderrAsync("access: refused 1 by not in any --allow, the last from 127.0.0.6", Deadline);
        }
    }

    [Fact]
    public async Task Datagrams_from_denied_sources_are_dropped_and_counted()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--deny", "127.0.0.7/32");
        await using (server)
        {
            using var denied = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            denied.Bind(new IPEndPoint(IPAddress.Parse("127.0.0.7"), 0));
            await denied.SendToAsync("no"u8.ToArray(), new IPEndPoint(IPAddress.Loopback, port));
            using var fine = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            fine.Bind(new IPEndPoint(IPAddress.Parse("127.0.0.8"), 0));
            await fine.SendToAsync("yes"u8.ToArray(), new IPEndPoint(IPAddress.Loopback, port));
            var buffer = new byte[16];
            using var wait = new CancellationTokenSource(Deadline);
            Assert.Equal(3, await fine.ReceiveAsync(buffer, SocketFlags.None, wait.Token));
            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            Assert.Contains("udp: 1 datagrams echoed", server.StandardErrorText, StringComparison.Ordinal);
            Assert.Contains("1 dropped by --allow/--deny", server.StandardErrorText, StringComparison.Ordinal);
            Assert.Equal(0, denied.Available);
        }
    }

    [Fact]
    public async Task Max_per_address_gives_the_extra_connection_the_busy_line_and_frees_its_place_at_close()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--max-per-address", "2");
        await using (server)
        {
            using var first = await ConnectFromAsync("127.0.0.9", port);
            using var second = await ConnectFromAsync("127.0.0.9", port);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(first, GreetingBytes.Length));
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(second, GreetingBytes.Length));
            using (var third = await ConnectFromAsync("127.0.0.9", port))
            {
                Assert.Equal("server busy: 2 connections from your address\n"u8.ToArray(), await ReceiveToEndAsync(third));
            }

            using (var elsewhere = await ConnectFromAsync("127.0.0.10", port))
            {
                Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(elsewhere, GreetingBytes.Length));
            }

            first.Shutdown(SocketShutdown.Send);
            await ReceiveToEndAsync(first);
            await server.WaitForStderrAsync("from 127.0.0.9", Deadline);
            await ProcStats.WaitUntilAsync(() => server.StandardErrorText.Split('\n').Count(l => l.Contains("closed: closed by peer", StringComparison.Ordinal)) >= 1,
                Deadline, () => server.StandardErrorText);
            using var again = await ConnectFromAsync("127.0.0.9", port);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(again, GreetingBytes.Length));
        }
    }

    [Fact]
    public async Task Allow_uid_checks_the_Unix_peer_with_SO_PEERCRED()
    {
        Assert.SkipUnless(Environment.UserName == "root", "connecting as another user needs root (setpriv)");
        string path = Path.Combine(_dir.FullName, "s.sock");
        File.SetUnixFileMode(_dir.FullName, (UnixFileMode)0b111_101_101); // 755: the other user may reach the socket file
        await using var server = ChildProcess.Start("serve", "--quiet", "--unix", path, "--unix-mode", "666", "--allow-uid", "0");
        await server.WaitForStderrAsync("listening on", Deadline);
        using (var root = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            await root.ConnectAsync(new UnixDomainSocketEndPoint(path));
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(root, GreetingBytes.Length));
        }

        var nobody = await ChildProcess.RunProgramAsync("setpriv", ExitDeadline, null, "--reuid=65534", "--regid=65534", "--clear-groups",
            "/usr/bin/python3", "-c", $"import socket; s=socket.socket(socket.AF_UNIX); s.connect('{path}'); print(len(s.recv(1000)))");
        Assert.True(nobody.StdoutText == "0\n", nobody.ToString());
        await server.WaitForStderrAsync("access: refused 1 by uid 65534 gid 65534 not in --allow-uid/--allow-gid", Deadline);
    }

    [Theory]
    [InlineData("invalid --allow '10.0.0.300/8'", "--allow", "10.0.0.300/8")]
    [InlineData("host bits are set (did you mean 10.0.0.0/8?)", "--deny", "10.1.2.3/8")]
    [InlineData("the prefix length must be 0 to 32", "--deny", "10.0.0.0/33")]
    [InlineData("--allow-uid and --allow-gid check a Unix socket's peer", "--allow-uid", "0")]
    public Task A_bad_rule_is_a_usage_error(string expected, params string[] args) =>
        ServeProcessTests.AssertUsageErrorAsync(expected, ["serve", .. args]);

    [Fact]
    public async Task A_bad_line_in_a_rules_file_names_the_file_and_line()
    {
        string rules = Path.Combine(_dir.FullName, "allow.txt");
        File.WriteAllText(rules, "127.0.0.0/8\nnot-an-address\n");
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--port", "0", "--allow-file", rules);
        Assert.Equal(3, result.ExitCode);
        Assert.Contains($"invalid {rules}:2 'not-an-address'", result.Stderr, StringComparison.Ordinal);
    }
}

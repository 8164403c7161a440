using System.Net;
using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

// Binding: SO_REUSEADDR, errno-named errors, host names, IPv4/IPv6 choices.
public sealed partial class ServeProcessTests
{
    [Fact]
    public async Task A_restart_binds_the_same_port_at_once_although_the_last_connection_is_in_TIME_WAIT()
    {
        var (first, port) = await ChildProcess.StartServerAsync("--quiet");
        await using (first)
        {
            using var client = await ConnectAsync(port);
            await ReceiveExactlyAsync(client, GreetingBytes.Length);
            first.Signal(ChildProcess.SIGTERM);
            Assert.Empty(await ReceiveToEndAsync(client)); // the server closed first: its side goes to TIME_WAIT
            client.Dispose();
            Assert.Equal(0, await first.WaitForExitAsync(ExitDeadline));
        }

        await using var second = ChildProcess.Start("serve", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "--quiet");
        await second.WaitForStderrAsync($"listening on [::]:{port}", Deadline);
        using var again = await ConnectAsync(port);
        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(again, GreetingBytes.Length));
    }

    [Fact]
    public async Task Port_in_use_is_one_line_with_EADDRINUSE_a_hint_and_exit_3()
    {
        using var holder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        holder.Bind(new IPEndPoint(IPAddress.Any, 0));
        holder.Listen();
        int port = ((IPEndPoint)holder.LocalEndPoint!).Port;

        var result = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--port", port.ToString(System.Globalization.CultureInfo.InvariantCulture));

        Assert.Equal(3, result.ExitCode);
        string line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"echokit: bind failed: Address already in use (EADDRINUSE) on [::]:{port}", line, StringComparison.Ordinal);
        Assert.Contains($"ss -ltnp 'sport = :{port}'", line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_address_this_machine_does_not_have_is_EADDRNOTAVAIL_and_exit_3()
    {
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--port", "0", "--bind", "192.0.2.1");
        Assert.Equal(3, result.ExitCode);
        Assert.Contains("bind failed: Cannot assign requested address (EADDRNOTAVAIL) on 192.0.2.1:0", result.Stderr, StringComparison.Ordinal);
        NoStackTrace(result.Stderr);
    }

    [Fact]
    public async Task A_privileged_port_without_privilege_is_EACCES_and_exit_3()
    {
        // Tests run as root here: take away CAP_NET_BIND_SERVICE for this one process (setpriv is in util-linux).
        Assert.SkipUnless(File.Exists("/usr/bin/setpriv"), "setpriv (util-linux) is not installed");
        Assert.SkipWhen(int.Parse(File.ReadAllText("/proc/sys/net/ipv4/ip_unprivileged_port_start").Trim(), System.Globalization.CultureInfo.InvariantCulture) <= 80,
            "this kernel lets anyone bind port 80 (net.ipv4.ip_unprivileged_port_start)");
        var info = new System.Diagnostics.ProcessStartInfo("/usr/bin/setpriv")
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        foreach (var arg in (string[])["--bounding-set=-net_bind_service", .. ChildProcess.Echokit("serve", "--port", "80")])
        {
            info.ArgumentList.Add(arg);
        }

        using var process = System.Diagnostics.Process.Start(info)!;
        var stderr = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(ExitDeadline);
        Assert.Equal(3, process.ExitCode);
        Assert.Contains("bind failed: Permission denied (EACCES) on [::]:80", await stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_bind_host_name_is_resolved_and_IPv6_literals_work()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--bind", "[::1]", "--quiet");
        await using (server)
        {
            using var client = await ConnectAsync(IPAddress.IPv6Loopback, port);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            await Assert.ThrowsAsync<SocketException>(() => ConnectAsync(IPAddress.Loopback, port));
        }

        var (named, namedPort) = await ChildProcess.StartServerAsync("--bind", "localhost", "--quiet");
        await using (named)
        {
            using var client = await ConnectAsync(IPAddress.Loopback, namedPort);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
        }
    }

    [Fact]
    public async Task Minus_6_listens_on_IPv6_only_and_minus_4_on_IPv4_only()
    {
        var (six, sixPort) = await ChildProcess.StartServerAsync("-6", "--quiet");
        await using (six)
        {
            Assert.DoesNotContain("dual-stack", await six.WaitForStderrAsync("listening on [::]:", Deadline), StringComparison.Ordinal);
            using var client = await ConnectAsync(IPAddress.IPv6Loopback, sixPort);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            var refused = await Assert.ThrowsAsync<SocketException>(() => ConnectAsync(IPAddress.Loopback, sixPort));
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
        }

        var (four, fourPort) = await ChildProcess.StartServerAsync("-4", "--quiet");
        await using (four)
        {
            await four.WaitForStderrAsync("listening on 0.0.0.0:", Deadline);
            using var client = await ConnectAsync(IPAddress.Loopback, fourPort);
            Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
            var refused = await Assert.ThrowsAsync<SocketException>(() => ConnectAsync(IPAddress.IPv6Loopback, fourPort));
            Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);

            var wrongFamily = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "-6", "127.0.0.1", fourPort.ToString(System.Globalization.CultureInfo.InvariantCulture), "--send", "x");
            Assert.Equal(4, wrongFamily.ExitCode);
            Assert.Contains("127.0.0.1 has no IPv6 address", wrongFamily.Stderr, StringComparison.Ordinal);
            var rightFamily = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "-4", "127.0.0.1", fourPort.ToString(System.Globalization.CultureInfo.InvariantCulture), "--send", "x", "--expect", "182");
            Assert.Equal(0, rightFamily.ExitCode);
        }
    }
}

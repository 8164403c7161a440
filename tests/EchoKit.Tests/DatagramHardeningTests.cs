using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using EchoKit.Internal;
using EchoKit.Internal.Datagrams;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// The datagram service against an attacker: spoofed sources by the hundred thousand (bounded memory),
/// datagrams spoofed from the server's own address, a Unix client that turns the reply into a self-loop,
/// another local socket trying to share the port.
/// </summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public sealed class DatagramHardeningTests : IDisposable
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("echokit-dgram-");

    public void Dispose() => _dir.Delete(recursive: true);

    /// <summary>
    /// A raw IPv4 socket that writes its own IP and UDP headers, so any source address and port can be
    /// claimed (root only: CAP_NET_RAW). Loopback delivers any 127.0.0.0/8 source.
    /// </summary>
    private static Socket? RawSender()
    {
        try
        {
            return new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Raw);
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.AccessDenied or SocketError.OperationNotSupported)
        {
            return null;
        }
    }

    private static int SpoofedDatagram(Span<byte> packet, uint source, int sourcePort, int port, ReadOnlySpan<byte> payload)
    {
        int length = 28 + payload.Length;
        packet[..28].Clear();
        packet[0] = 0x45; // IPv4, 20-byte header
        BinaryPrimitives.WriteUInt16BigEndian(packet[2..], (ushort)length);
        packet[8] = 64; // TTL
        packet[9] = 17; // UDP
        BinaryPrimitives.WriteUInt32BigEndian(packet[12..], source);
        BinaryPrimitives.WriteUInt32BigEndian(packet[16..], 0x7F000001); // to 127.0.0.1; the kernel fills the IP checksum
        BinaryPrimitives.WriteUInt16BigEndian(packet[20..], (ushort)sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(packet[22..], (ushort)port);
        BinaryPrimitives.WriteUInt16BigEndian(packet[24..], (ushort)(8 + payload.Length)); // UDP checksum 0: none (IPv4)
        payload.CopyTo(packet[28..]);
        return length;
    }

    [Fact]
    public async Task A_datagram_spoofed_from_the_servers_own_address_is_dropped_not_echoed_for_ever()
    {
        using var raw = RawSender();
        Assert.SkipWhen(raw is null, "raw sockets need root (CAP_NET_RAW)");
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--tcp", "--quiet", "--udp-rate", "0");
        await using var _ = server;
        var packet = new byte[64];
        int length = SpoofedDatagram(packet, 0x7F000001, port, port, "loop"u8);
        raw!.SendTo(packet.AsSpan(0, length), SocketFlags.None, new IPEndPoint(IPAddress.Loopback, 0));

        await server.WaitForStderrAsync("1 dropped as sent from the server's own address", Deadline);
        var before = ProcStats.CpuTime(server.Pid);
        await Task.Delay(1000); // measuring: a looping datagram would keep the server at 100 % of a core
        var used = ProcStats.CpuTime(server.Pid) - before;
        Assert.True(used < TimeSpan.FromMilliseconds(300), $"the server used {used.TotalMilliseconds:0} ms of CPU in 1 s after the spoofed datagram");

        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        client.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        await client.SendToAsync("still here"u8.ToArray(), new IPEndPoint(IPAddress.Loopback, port));
        var buffer = new byte[64];
        var reply = await client.ReceiveFromAsync(buffer, new IPEndPoint(IPAddress.Any, 0)).WaitAsync(Deadline);
        Assert.Equal("still here"u8.ToArray(), buffer[..reply.ReceivedBytes]);
    }

    [Fact]
    public async Task A_Unix_client_that_swaps_its_name_for_a_link_to_the_server_gets_no_self_loop()
    {
        string serverPath = Path.Combine(_dir.FullName, "server.sock");
        string clientPath = Path.Combine(_dir.FullName, "client.sock");
        await using var server = ChildProcess.Start("serve", "--udp", "--unix", serverPath, "--quiet");
        await server.WaitForStderrAsync("listening on unix:", Deadline);

        using var client = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        client.Bind(new UnixDomainSocketEndPoint(clientPath));
        var to = new UnixDomainSocketEndPoint(serverPath);
        await client.SendToAsync("first"u8.ToArray(), to);
        var buffer = new byte[64];
        int n = await client.ReceiveAsync(buffer).WaitAsync(Deadline);
        Assert.Equal("first"u8.ToArray(), buffer[..n]);

        // Our name now leads to the server's socket: its reply to us would come back to it, from itself.
        File.Delete(clientPath);
        File.CreateSymbolicLink(clientPath, serverPath);
        await client.SendToAsync("second"u8.ToArray(), to);
        await server.WaitForStderrAsync("1 dropped as sent from the server's own address", Deadline);
        var before = ProcStats.CpuTime(server.Pid);
        await Task.Delay(1000); // measuring: a self-loop keeps the server at 100 % of a core
        var used = ProcStats.CpuTime(server.Pid) - before;
        Assert.True(used < TimeSpan.FromMilliseconds(300), $"the server used {used.TotalMilliseconds:0} ms of CPU in 1 s");
        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        Assert.Contains(" 1 dropped as sent from the server's own address", server.StandardErrorText, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Six_hundred_thousand_spoofed_sources_do_not_grow_the_servers_memory()
    {
        using var raw = RawSender();
        Assert.SkipWhen(raw is null, "raw sockets need root (CAP_NET_RAW)");
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet");
        await using var _ = server;

        // Warm up with a few thousand sources, then measure what the next 600,000 add.
        var packet = new byte[64];
        var to = new IPEndPoint(IPAddress.Loopback, 0);
        void Flood(int from, int count)
        {
            for (int i = from; i < from + count; i++)
            {
                // 127.x.y.z with x.y.z = i + 1, source port 40000: each datagram from another address.
                int length = SpoofedDatagram(packet, 0x7F000000u | (uint)(i + 1), 40000, port, "x"u8);
                raw!.SendTo(packet.AsSpan(0, length), SocketFlags.None, to);
            }
        }

        Flood(0, 5000);
        await Task.Delay(500); // settling: let the server take the warm-up burst
        long rssBefore = ProcStats.ResidentBytes(server.Pid);
        await Task.Run(() => Flood(5000, 600_000));
        await Task.Delay(1000); // settling: the server drains its receive queue
        long grown = ProcStats.ResidentBytes(server.Pid) - rssBefore;
        Assert.True(grown < 16L << 20, $"RSS grew by {grown / (1 << 20)} MiB over 600,000 sources");

        // The flood did reach the server: each new source was answered (the kernel drops some when its receive queue overflows).
        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        var summary = System.Text.RegularExpressions.Regex.Match(server.StandardErrorText, @"udp: (\d+) datagrams echoed");
        Assert.True(summary.Success && long.Parse(summary.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) > 100_000, server.StandardErrorText);
    }

    [Fact]
    public void The_rate_table_is_fixed_in_size_allocates_nothing_and_keeps_each_source_to_its_rate()
    {
        var table = new SourceRateTable(perSecond: 10);
        var address = new SocketAddress(AddressFamily.InterNetwork);
        new IPEndPoint(IPAddress.Parse("10.1.2.3"), 5000).Serialize().Buffer.Span.CopyTo(address.Buffer.Span);

        long now = 1000;
        int answered = 0;
        for (int i = 0; i < 100; i++)
        {
            answered += table.TryTake(address, now) ? 1 : 0; // 100 datagrams in the same instant
        }

        Assert.Equal(10, answered); // one second of burst
        Assert.True(table.TryTake(address, now + 100)); // 100 ms later: one more token

        long allocated = GC.GetAllocatedBytesForCurrentThread();
        var span = address.Buffer.Span;
        for (uint i = 0; i < 1_000_000; i++)
        {
            BinaryPrimitives.WriteUInt32BigEndian(span[4..], 0x0A000000 | i);
            table.TryTake(address, now + 200);
        }

        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - allocated);
    }
}

using System.Globalization;
using System.Net;
using System.Text;
using System.Text.RegularExpressions;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>--hex-dump: every byte each way, in text2pcap's layout, bounded, and never in the echo's way.</summary>
public sealed partial class HexDumpTests : IDisposable
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);
    private readonly string _directory = Directory.CreateTempSubdirectory("echokit-hexdump-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [GeneratedRegex(@"^([IO]) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}) ([0-9a-f]{6}) ((?:[0-9a-f]{2} )+) *\s\|[^\n]*\| conn=(\d+) peer=(\S+) offset=(\d+)$")]
    private static partial Regex Line();

    /// <summary>The bytes of each (connection, direction), put back together from the lines, checking that the offsets run on.</summary>
    private static Dictionary<(long Conn, char Direction), MemoryStream> Streams(string dump, out List<string> peers)
    {
        var streams = new Dictionary<(long, char), MemoryStream>();
        peers = [];
        foreach (string line in dump.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.StartsWith('#'))
            {
                continue;
            }

            var match = Line().Match(line);
            Assert.True(match.Success, $"not a dump line: {line}");
            var key = (long.Parse(match.Groups[5].Value, CultureInfo.InvariantCulture), match.Groups[1].Value[0]);
            var bytes = Convert.FromHexString(match.Groups[4].Value.Replace(" ", "", StringComparison.Ordinal));
            Assert.InRange(bytes.Length, 1, 16);
            long offset = long.Parse(match.Groups[7].Value, CultureInfo.InvariantCulture);
            // text2pcap's offset: 0 on every line of a stream (each stands alone), running on within a datagram.
            Assert.Equal(key.Item1 == 0 ? offset : 0, Convert.ToInt64(match.Groups[3].Value, 16));
            if (!streams.TryGetValue(key, out var stream))
            {
                streams[key] = stream = new MemoryStream();
            }

            if (key.Item1 != 0)
            {
                Assert.Equal(stream.Length, offset); // a datagram's offset starts again at 0
            }

            stream.Write(bytes);
            peers.Add(match.Groups[6].Value);
        }

        return streams;
    }

    private static byte[] AllByteValues() => Enumerable.Range(0, 4096).Select(i => (byte)(i * 7)).ToArray();

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Serve_dumps_every_byte_each_way_and_text2pcap_reads_it(string engine)
    {
        string path = Path.Combine(_directory, "serve.dump");
        byte[] payload = AllByteValues();
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--engine", engine, "--hex-dump", path);
        await using (server)
        {
            using (var client = await ConnectAsync(port))
            {
                await ReceiveExactlyAsync(client, GreetingBytes.Length);
                await client.SendAsync(payload);
                client.Shutdown(System.Net.Sockets.SocketShutdown.Send);
                Assert.Equal(payload, await ReceiveToEndAsync(client));
            }

            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        }

        var streams = Streams(File.ReadAllText(path), out var peers);
        var (conn, _) = Assert.Single(streams.Keys, k => k.Direction == 'I');
        Assert.Equal(payload, streams[(conn, 'I')].ToArray());
        Assert.Equal([.. GreetingBytes, .. payload], streams[(conn, 'O')].ToArray());
        Assert.All(peers, p => Assert.StartsWith("127.0.0.1:", p, StringComparison.Ordinal));

        // text2pcap makes a pcap of it, and the TCP payload in it is every byte each way.
        Assert.SkipUnless(File.Exists("/usr/bin/text2pcap") && File.Exists("/usr/bin/tshark"), "text2pcap and tshark are not installed (.ci/run installs wireshark-common and tshark)");
        string pcap = Path.Combine(_directory, "serve.pcap");
        var text2pcap = await ChildProcess.RunProgramAsync("text2pcap", ExitDeadline, null, "-q", "-D", "-t", "%Y-%m-%dT%H:%M:%S.%f", "-T", "40000,8888", path, pcap);
        Assert.True(text2pcap.ExitCode == 0, text2pcap.Stderr);
        var tshark = await ChildProcess.RunProgramAsync("tshark", ExitDeadline, null, "-r", pcap, "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.len");
        Assert.True(tshark.ExitCode == 0, tshark.Stderr);
        var lengths = tshark.StdoutText.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split('\t'))
            .GroupBy(f => f[0]).ToDictionary(g => g.Key, g => g.Sum(f => int.Parse(f[1], CultureInfo.InvariantCulture)));
        Assert.Equal(payload.Length, lengths["40000"]);
        Assert.Equal(GreetingBytes.Length + payload.Length, lengths["8888"]);
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Serve_dumps_datagrams_as_connection_0_with_their_sender(string engine)
    {
        string path = Path.Combine(_directory, "udp.dump");
        byte[] datagram = AllByteValues()[..40];
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--udp", "--bind", "127.0.0.1", "--engine", engine, "--hex-dump", path);
        string sender;
        await using (server)
        {
            using (var udp = UdpTests.UdpClient(IPAddress.Loopback))
            {
                sender = udp.LocalEndPoint!.ToString()!;
                await udp.SendToAsync(datagram, new IPEndPoint(IPAddress.Loopback, port));
                Assert.Equal(datagram, await UdpTests.ReceiveDatagramAsync(udp, ExitDeadline));
            }

            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
        }

        var streams = Streams(File.ReadAllText(path), out var peers);
        Assert.Equal(datagram, streams[(0, 'I')].ToArray());
        Assert.Equal(datagram, streams[(0, 'O')].ToArray());
        Assert.All(peers, p => Assert.Equal(sender, p));
    }

    [Fact]
    public async Task Connect_dumps_to_stdout_instead_of_the_received_bytes()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet");
        await using (server)
        {
            var result = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "127.0.0.1", port.ToString(CultureInfo.InvariantCulture), "--send", "ping\\x00\\x1b[2J", "-N", "--hex-dump", "-");
            Assert.True(result.ExitCode == 0, result.Stderr);
            Assert.DoesNotContain((byte)0x1b, result.Stdout); // the escape is in the dump as 1b, never raw on the terminal
            var streams = Streams(result.StdoutText, out var peers);
            Assert.Equal("ping\0\x1b[2J"u8.ToArray(), streams[(1, 'O')].ToArray());
            Assert.Equal([.. GreetingBytes, .. "ping\0\x1b[2J"u8.ToArray()], streams[(1, 'I')].ToArray());
            Assert.All(peers, p => Assert.Equal($"127.0.0.1:{port}", p));
        }
    }

    [Fact]
    public async Task A_dump_nobody_reads_never_stalls_the_echo_and_a_failed_dump_ends_with_a_warning()
    {
        // A FIFO whose reader opens it and never reads: the dump's writer blocks after the pipe's 64 KiB.
        string fifo = Path.Combine(_directory, "stalled");
        Assert.Equal(0, (await ChildProcess.RunProgramAsync("mkfifo", ExitDeadline, null, fifo)).ExitCode);
        await using var reader = ChildProcess.StartProgram("bash", "-c", $"exec 3<'{fifo}'; echo open; exec sleep 60");
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--no-greeting", "--hex-dump", fifo);
        await using (server)
        {
            await reader.WaitForStdoutAsync(5, ExitDeadline);
            byte[] payload = new byte[24 << 20];
            Random.Shared.NextBytes(payload);
            using (var client = await ConnectAsync(port))
            {
                var receiving = ReceiveExactlyAsync(client, payload.Length);
                await client.SendAsync(payload);
                Assert.Equal(payload, await receiving);
            }

            await server.WaitForStderrAsync("the output falls behind", ExitDeadline);

            // The reader goes: the next write fails (EPIPE), the dump ends, the server serves on.
            reader.Signal(ChildProcess.SIGKILL);
            using (var after = await ConnectAsync(port))
            {
                for (int i = 0; i < 40 && !server.StandardErrorText.Contains("writing failed", StringComparison.Ordinal); i++)
                {
                    await after.SendAsync(new byte[1 << 20]);
                    await ReceiveExactlyAsync(after, 1 << 20);
                }
            }

            await server.WaitForStderrAsync("--hex-dump " + fifo + ": writing failed, the dump ends here (the echo goes on)", ExitDeadline);
            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
            Assert.Contains("bytes were not dumped in all", server.StandardErrorText, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Chunks_dropped_while_the_output_is_stalled_leave_a_counted_gap_line()
    {
        using var output = new GateStream();
        var dump = new Internal.HexDump(output, "test", Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        var peer = new IPEndPoint(IPAddress.Loopback, 1234);
        byte[] chunk = new byte[64 * 1024];
        long offset = 0;
        while (dump.DroppedBytes == 0)
        {
            dump.Record(7, peer, inbound: true, offset, chunk);
            offset += chunk.Length;
        }

        long dropped = dump.DroppedBytes;
        offset += chunk.Length; // that chunk is in the gap
        output.Open();
        Assert.True(SpinWait.SpinUntil(() => dump.QueuedBytes == 0, ExitDeadline));
        dump.Record(7, peer, inbound: true, offset, "after"u8);
        Assert.True(dump.Close(ExitDeadline));

        string text = Encoding.ASCII.GetString(output.Written.ToArray());
        Assert.Contains($"# gap: {dropped} bytes in 1 chunks not dumped", text, StringComparison.Ordinal);
        Assert.EndsWith($"|after| conn=7 peer=127.0.0.1:1234 offset={offset}\n", text, StringComparison.Ordinal);
        Assert.InRange(offset - dropped, 0, Internal.HexDump.MaxQueuedBytes + chunk.Length); // what was queued is bounded
    }

    /// <summary>An output whose writes wait until <see cref="Open"/>, as a pipe nobody reads.</summary>
    private sealed class GateStream : Stream
    {
        private readonly ManualResetEventSlim _open = new();

        public MemoryStream Written { get; } = new();

        public void Open() => _open.Set();

        public override void Write(byte[] buffer, int offset, int count)
        {
            _open.Wait();
            Written.Write(buffer, offset, count);
        }

        public override void Flush() => _open.Wait();

        public override bool CanRead => false;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => Written.Length;

        public override long Position { get => Written.Length; set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            _open.Dispose();
            base.Dispose(disposing);
        }
    }
}

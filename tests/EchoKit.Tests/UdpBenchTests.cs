using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using EchoKit.Tests.Infrastructure;

namespace EchoKit.Tests;

/// <summary>
/// <c>echokit bench --udp</c> against peers that misbehave the ways a network does: one that drops, holds back
/// and duplicates datagrams, one that corrupts them, a stalled server, and an open-loop schedule.
/// </summary>
public sealed class UdpBenchTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(30);

    /// <summary>
    /// A UDP echo peer in process that, of every ten datagrams, drops one, holds one back until the next has been
    /// answered (reordering), sends one twice, and (with <paramref name="corrupt"/>) flips a byte of one.
    /// </summary>
    private sealed class UnreliableEcho : IAsyncDisposable
    {
        private readonly Socket _socket = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _loop;

        public UnreliableEcho(bool corrupt = false)
        {
            _socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _loop = Task.Run(() => RunAsync(corrupt));
        }

        public int Port => ((IPEndPoint)_socket.LocalEndPoint!).Port;

        private async Task RunAsync(bool corrupt)
        {
            var buffer = new byte[70_000];
            (byte[] Data, EndPoint To)? held = null;
            try
            {
                for (long k = 0; ; k++)
                {
                    var got = await _socket.ReceiveFromAsync(buffer, new IPEndPoint(IPAddress.Any, 0), _stop.Token);
                    byte[] datagram = buffer.AsSpan(0, got.ReceivedBytes).ToArray();
                    switch (k % 10)
                    {
                        case 3:
                            continue; // lost
                        case 5:
                            held = (datagram, got.RemoteEndPoint); // comes back after the next one
                            continue;
                        case 7:
                            await _socket.SendToAsync(datagram, got.RemoteEndPoint); // twice: the second is late
                            break;
                        case 9 when corrupt:
                            datagram[^1] ^= 0x55;
                            break;
                    }

                    await _socket.SendToAsync(datagram, got.RemoteEndPoint);
                    if (held is { } h && k % 10 == 6)
                    {
                        await _socket.SendToAsync(h.Data, h.To);
                        held = null;
                    }
                }
            }
            catch (OperationCanceledException)
            {
            }
        }

        public async ValueTask DisposeAsync()
        {
            _stop.Cancel();
            await _loop.WaitAsync(TimeSpan.FromSeconds(10));
            _socket.Dispose();
            _stop.Dispose();
        }
    }

    private static void SkipUnlessLoops() =>
        Assert.SkipUnless(EchoServer.EpollSupported, "--udp with --depth and --rate runs on the epoll loops (Linux x86-64)");

    [Fact]
    public async Task Lost_late_and_reordered_datagrams_are_counted_and_the_run_goes_on()
    {
        SkipUnlessLoops();
        await using var peer = new UnreliableEcho();
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", "--udp", $"127.0.0.1:{peer.Port}",
            "-c", "2", "-d", "4", "-s", "100", "--udp-timeout", "50ms", "-t", "1s", "--warmup", "200ms", "--json");
        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = JsonDocument.Parse(result.StdoutText);
        var r = json.RootElement;
        Assert.Equal("udp", r.GetProperty("proto").GetString());
        long messages = r.GetProperty("msgs").GetInt64();
        long lost = r.GetProperty("lost").GetInt64();
        Assert.True(messages > 100, result.StdoutText);
        Assert.Equal(0, r.GetProperty("mismatches").GetInt64());
        // One in ten dropped: about 10 % lost (each loss stalls its slot for the timeout, so fewer in the window).
        Assert.InRange(lost, messages / 40, messages / 4);
        Assert.True(r.GetProperty("late").GetInt64() > 0, result.StdoutText);
        Assert.True(r.GetProperty("reordered").GetInt64() > 0, result.StdoutText);
        Assert.Equal(50, r.GetProperty("udp_timeout_ms").GetDouble());
    }

    [Fact]
    public async Task A_corrupted_datagram_is_a_mismatch_and_exit_9()
    {
        SkipUnlessLoops();
        await using var peer = new UnreliableEcho(corrupt: true);
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", "--udp", $"127.0.0.1:{peer.Port}",
            "-c", "1", "-d", "2", "--udp-timeout", "50ms", "-t", "500ms", "--warmup", "0", "--json");
        Assert.Equal(9, result.ExitCode);
        using var json = JsonDocument.Parse(result.StdoutText);
        Assert.True(json.RootElement.GetProperty("mismatches").GetInt64() > 0, result.StdoutText);
    }

    [Fact]
    public async Task A_stalled_server_loses_every_datagram_and_the_run_ends_on_time_with_exit_11()
    {
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--udp-rate", "0");
        await using (server)
        {
            server.Signal(19); // SIGSTOP
            await ProcStats.WaitUntilAsync(() => ProcStats.IsStopped(server.Pid), Loopback.Deadline, () => "the server did not stop");
            var started = Stopwatch.StartNew();
            var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", "--udp", $"127.0.0.1:{port}",
                "-c", "4", "-d", "2", "-t", "1s", "--warmup", "0");
            server.Signal(18); // SIGCONT
            Assert.Equal(11, result.ExitCode);
            Assert.Contains("4 of 4 UDP flows never got an echo: every datagram lost", result.Stderr, StringComparison.Ordinal);
            Assert.True(started.Elapsed < TimeSpan.FromSeconds(10), $"the run took {started.Elapsed}");
        }
    }

    [Fact]
    public async Task Open_loop_sends_on_schedule_and_a_server_that_keeps_up_loses_nothing()
    {
        SkipUnlessLoops();
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--udp-rate", "0");
        await using (server)
        {
            var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", "--udp", $"127.0.0.1:{port}",
                "-c", "4", "--rate", "4000", "-t", "1s", "--warmup", "200ms", "--json");
            Assert.True(result.ExitCode == 0, result.ToString());
            using var json = JsonDocument.Parse(result.StdoutText);
            var r = json.RootElement;
            Assert.InRange(r.GetProperty("msgs_per_s").GetDouble(), 3000, 5000);
            Assert.Equal(0, r.GetProperty("lost").GetInt64());
            Assert.Equal(0, r.GetProperty("mismatches").GetInt64());
        }
    }

    [Fact]
    public async Task Bench_udp_with_depth_against_our_server_loses_nothing_and_matches_the_report()
    {
        SkipUnlessLoops();
        var (server, port) = await ChildProcess.StartServerAsync("--udp", "--quiet", "--udp-rate", "0");
        await using (server)
        {
            var result = await ChildProcess.RunAsync(ExitDeadline, null, "bench", "--udp", $"[::1]:{port}",
                "-c", "8", "-d", "8", "-s", "1400", "-t", "1s", "--warmup", "200ms");
            Assert.True(result.ExitCode == 0, result.ToString());
            Assert.Contains("depth 8, closed loop", result.StdoutText, StringComparison.Ordinal);
            Assert.Matches(@"datagrams   lost 0 \(0 %, not back within 200 ms\)", result.StdoutText);
        }
    }
}

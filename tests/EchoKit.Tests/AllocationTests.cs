using System.Globalization;
using System.Text.RegularExpressions;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// The receive → send path allocates nothing per message. An allocation count, not a timing: the real
/// server reports the bytes its process allocated when it stops; a run with 40,000 more round trips
/// than another must not allocate more than a few bytes per message more.
/// </summary>
[Collection(nameof(ReliabilityTests))]
public sealed partial class AllocationTests
{
    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    [InlineData("udp")]
    [InlineData("udp-socket")]
    public async Task Echoing_allocates_nothing_per_message(string path)
    {
        // Debug builds compile async state machines as classes: one allocation per call by design.
        bool optimized = typeof(EchoServer).Assembly.GetCustomAttributes(typeof(System.Diagnostics.DebuggableAttribute), false)
            .Cast<System.Diagnostics.DebuggableAttribute>().All(a => !a.IsJITOptimizerDisabled);
        Assert.SkipUnless(optimized, "allocation counts mean something only in an optimized build: dotnet test -c Release");
        Assert.SkipWhen(path is "epoll" or "udp" && !EchoServer.EpollSupported, "the epoll engine (and the batched datagram loops) run on Linux x86-64 only");
        long few = Math.Min(await AllocatedAsync(path, 5_000), await AllocatedAsync(path, 5_000));
        long many = Math.Min(await AllocatedAsync(path, 45_000), await AllocatedAsync(path, 45_000));
        double perMessage = (many - few) / 40_000.0;
        // One 24-byte object per message would show as 24 here (the UDP paths allocated 24 bytes per datagram
        // until issue 14: a closure the compiler created at the top of the own-address check).
        const double bound = 4;
        Assert.True(perMessage < bound, $"{perMessage:0.00} bytes allocated per echoed message ({few} vs {many} bytes in all)");
    }

    private static async Task<long> AllocatedAsync(string path, int roundTrips)
    {
        string[] args = path switch
        {
            "udp" => ["--udp", "--udp-rate", "0"],
            "udp-socket" => ["--udp", "--udp-rate", "0", "--engine", "socket"],
            _ => ["--engine", path],
        };
        var (server, port) = await ChildProcess.StartServerAsync(["--quiet", "--no-greeting", .. args]);
        await using (server)
        {
            if (path.StartsWith("udp", StringComparison.Ordinal))
            {
                using var udp = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Dgram, System.Net.Sockets.ProtocolType.Udp);
                udp.Connect(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, port));
                var datagram = new byte[64];
                var reply = new byte[64];
                for (int i = 0; i < roundTrips; i++)
                {
                    await udp.SendAsync(datagram);
                    using var wait = new CancellationTokenSource(Deadline);
                    await udp.ReceiveAsync(reply, wait.Token); // loopback does not lose datagrams at this pace
                }
            }
            else
            {
                using (var client = await ConnectAsync(port))
                {
                var message = new byte[64];
                var echo = new byte[64];
                Random.Shared.NextBytes(message);
                for (int i = 0; i < roundTrips; i++)
                {
                    await client.SendAsync(message);
                    int got = 0;
                    while (got < echo.Length)
                    {
                        got += await client.ReceiveAsync(echo.AsMemory(got));
                    }
                }

                Assert.Equal(message, echo);
                }

                await server.WaitForStderrAsync("closed: closed by peer", Deadline);
            }

            server.Signal(ChildProcess.SIGTERM);
            Assert.Equal(0, await server.WaitForExitAsync(Deadline));
            var match = StoppedLine().Match(server.StandardErrorText);
            Assert.True(match.Success, server.StandardErrorText);
            return long.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
        }
    }

    [GeneratedRegex(@"stopped \((\d+) bytes allocated")]
    private static partial Regex StoppedLine();
}

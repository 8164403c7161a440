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
    [Fact]
    public async Task Echoing_allocates_nothing_per_message()
    {
        // Debug builds compile async state machines as classes: one allocation per call by design.
        bool optimized = typeof(EchoServer).Assembly.GetCustomAttributes(typeof(System.Diagnostics.DebuggableAttribute), false)
            .Cast<System.Diagnostics.DebuggableAttribute>().All(a => !a.IsJITOptimizerDisabled);
        Assert.SkipUnless(optimized, "allocation counts mean something only in an optimized build: dotnet test -c Release");
        long few = Math.Min(await AllocatedAsync(5_000), await AllocatedAsync(5_000));
        long many = Math.Min(await AllocatedAsync(45_000), await AllocatedAsync(45_000));
        double perMessage = (many - few) / 40_000.0;
        // One 24-byte object per message would show as 24 here.
        Assert.True(perMessage < 4, $"{perMessage:0.00} bytes allocated per echoed message ({few} vs {many} bytes in all)");
    }

    private static async Task<long> AllocatedAsync(int roundTrips)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--quiet", "--no-greeting");
        await using (server)
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

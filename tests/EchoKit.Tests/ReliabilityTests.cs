using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// Limits, timeouts, backpressure and exhaustion, each against the real <c>echokit serve</c> process, one file per
/// behaviour: ReliabilityTests.Limits.cs, .Timeouts.cs, .Backpressure.cs, .Leaks.cs; here the shared helpers and
/// the limit flags' validation.
/// </summary>
[Collection(nameof(ReliabilityTests))]
public sealed partial class ReliabilityTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);

    private static async Task AssertEchoesAsync(Socket client, int size = 16)
    {
        var message = new byte[size];
        Random.Shared.NextBytes(message);
        await client.SendAsync(message);
        Assert.Equal(message, await ReceiveExactlyAsync(client, size));
    }

    private static async Task StopAsync(ChildProcess server)
    {
        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
    }

    [Theory]
    [InlineData("invalid --max-connections value '-1'", "--max-connections", "-1")]
    [InlineData("invalid --max-connections value 'many'", "--max-connections", "many")]
    [InlineData("invalid --idle-timeout value: '-5s' is negative", "--idle-timeout", "-5s")]
    [InlineData("invalid --idle-timeout value: 'forever' is not a duration", "--idle-timeout", "forever")]
    [InlineData("invalid --send-timeout value: '10 s' is not a duration", "--send-timeout", "10 s")]
    [InlineData("invalid --send-timeout value: '1e9h' is too long", "--send-timeout", "1e9h")]
    public Task Limit_flags_are_validated(string expected, params string[] args) =>
        ServeProcessTests.AssertUsageErrorAsync(expected, ["serve", "--port", "0", .. args]);
}

/// <summary>Timeouts, CPU and memory figures are measured here: these tests run alone, after the parallel ones.</summary>
[CollectionDefinition(nameof(ReliabilityTests), DisableParallelization = true)]
public sealed class ReliabilityTestsCollection;

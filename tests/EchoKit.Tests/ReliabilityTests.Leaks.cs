using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

// Churn and resets leave no descriptors or memory behind.
public sealed partial class ReliabilityTests
{
    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task Connect_close_churn_and_an_RST_storm_leak_no_descriptors_or_memory(string engine)
    {
        var (server, port) = await ChildProcess.StartServerAsync("--engine", engine, "--quiet");
        await using (server)
        {
            // Warm up every path once (the runtime opens some assemblies lazily, which costs
            // descriptors the first time), then take the baseline.
            await ChurnAsync(port, workers: 2, cycles: 100);
            await ResetStormAsync(port, batches: 1, size: 50);
            await ProcStats.WaitUntilAsync(() => server.StandardErrorText.Split('\n').Count(l => l.Contains(" closed: ", StringComparison.Ordinal)) >= 250,
                Deadline, () => "the warm-up connections to close");
            int fdsBefore = ProcStats.OpenDescriptors(server.Pid);
            long rssBefore = ProcStats.ResidentBytes(server.Pid);

            await ChurnAsync(port, workers: 8, cycles: 2500);      // 20,000 connect / send / close cycles
            await ResetStormAsync(port, batches: 10, size: 100);    // 1,000 connections reset mid-transfer

            // +32: the runtime opens about 11 files once, lazily, the first time it formats a stack trace
            // (System.Diagnostics.StackTrace, System.Reflection.Metadata, ..., our .pdb), which the warm-up
            // does not always reach. A leak of even 0.2 % of these 21,000 connections would exceed it.
            await ProcStats.WaitUntilAsync(() => ProcStats.OpenDescriptors(server.Pid) <= fdsBefore + 32, TimeSpan.FromSeconds(30),
                () => $"descriptors {ProcStats.OpenDescriptors(server.Pid)}, started at {fdsBefore}");
            long rssAfter = ProcStats.ResidentBytes(server.Pid);
            Assert.True(rssAfter - rssBefore < 48L << 20, $"RSS grew from {rssBefore >> 20} MiB to {rssAfter >> 20} MiB");

            using (var still = await ConnectAsync(port))
            {
                await ReceiveExactlyAsync(still, GreetingBytes.Length);
                await AssertEchoesAsync(still);
            }

            await StopAsync(server);
        }
    }

    private static Task ChurnAsync(int port, int workers, int cycles) =>
        Task.WhenAll(Enumerable.Range(0, workers).Select(_ => Task.Run(async () =>
        {
            for (int i = 0; i < cycles; i++)
            {
                using var client = await ConnectAsync(port);
                await ReceiveExactlyAsync(client, GreetingBytes.Length);
                await AssertEchoesAsync(client, 8);
            }
        })));

    private static async Task ResetStormAsync(int port, int batches, int size)
    {
        var junk = new byte[256 * 1024];
        for (int batch = 0; batch < batches; batch++)
        {
            var victims = await Task.WhenAll(Enumerable.Range(0, size).Select(_ => ConnectAsync(port)));
            foreach (var victim in victims)
            {
                _ = victim.SendAsync(junk); // in flight when the RST goes out
                victim.LingerState = new LingerOption(true, 0);
                victim.Dispose();
            }
        }
    }
}

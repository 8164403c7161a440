using System.Net.Sockets;
using EchoKit.Client;

namespace EchoKit.Cli;

/// <summary>
/// nc-style session: stdin → socket and socket → stdout at once. At stdin EOF the send side is
/// shut down (the server sees a FIN) and printing goes on until the server closes.
/// </summary>
internal static class InteractiveSession
{
    /// <param name="print">Whether received bytes go to stdout (not when stdout carries the hex dump).</param>
    public static async Task<int> RunAsync(ClientChannel channel, TimeSpan? recvTimeout, TimeSpan? sendTimeout, bool print = true)
    {
        // Console streams block on read; the pump gets a thread of its own so it cannot hold up the pool.
        var upload = Task.Factory.StartNew(() => PumpStdinAsync(channel, sendTimeout), CancellationToken.None,
            TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();
        var download = PumpToStdoutAsync(channel, recvTimeout, print);

        var first = await Task.WhenAny(upload, download).ConfigureAwait(false);
        if (first == upload && upload.IsFaulted && !download.IsCompleted)
        {
            // A failed send (reset, timeout) ends the session; the receive side would only repeat it.
            await upload.ConfigureAwait(false);
        }

        await download.ConfigureAwait(false);
        Console.Error.WriteLine("echokit: connection closed by peer");
        return ExitCodes.Ok;
    }

    private static async Task PumpStdinAsync(ClientChannel channel, TimeSpan? sendTimeout)
    {
        using var stdin = StandardStreams.OpenInput();
        var buffer = new byte[16 * 1024];
        int read;
        while ((read = stdin.Read(buffer, 0, buffer.Length)) > 0)
        {
            await channel.SendAsync(buffer.AsMemory(0, read), sendTimeout).ConfigureAwait(false);
        }

        await channel.ShutdownSendAsync().ConfigureAwait(false);
    }

    private static async Task PumpToStdoutAsync(ClientChannel channel, TimeSpan? recvTimeout, bool print)
    {
        var stdout = StandardStreams.Output;
        if (print)
        {
            stdout.WarnIfClosed("received bytes are not printed");
        }

        var buffer = new byte[64 * 1024];
        int received;
        while ((received = await channel.ReceiveAsync(buffer, recvTimeout, throwOnTimeout: true).ConfigureAwait(false)) > 0)
        {
            if (print)
            {
                stdout.Write(buffer.AsSpan(0, received));
            }
        }
    }
}

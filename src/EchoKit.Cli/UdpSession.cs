using System.Net;
using System.Net.Sockets;
using EchoKit.Client;

namespace EchoKit.Cli;

/// <summary>
/// <c>echokit connect --udp</c>: each stdin line (or the --send text) is one datagram; replies are printed
/// as they come. The socket is connected, so only the server's datagrams are read and an ICMP "port
/// unreachable" shows up as ECONNREFUSED. Replies still missing --wait after the last send are reported
/// as lost, never waited on forever.
/// </summary>
internal static class UdpSession
{
    public static async Task<int> RunAsync(string host, int port, AddressFamily? family, byte[]? payload, TimeSpan wait)
    {
        IPAddress address;
        try
        {
            address = (await SocketConnector.ResolveAsync(host, port, family).ConfigureAwait(false))[0];
        }
        catch (ConnectFailedException e)
        {
            return Program.Fail(ConnectCommand.ExitCodeOf(e), e.Message);
        }

        var target = new IPEndPoint(address, port);
        using var socket = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        socket.Connect(target);
        return await ExchangeAsync(socket, "udp " + EndPointText.Format(target), payload, wait).ConfigureAwait(false);
    }

    /// <summary>The same over a Unix datagram socket; our socket gets an abstract name so the server can answer.</summary>
    public static async Task<int> RunUnixAsync(string path, byte[]? payload, TimeSpan wait, TimeSpan connectTimeout)
    {
        Socket socket;
        try
        {
            socket = await SocketConnector.ConnectUnixDatagramAsync(path, connectTimeout).ConfigureAwait(false);
        }
        catch (ConnectFailedException e)
        {
            return Program.Fail(ConnectCommand.ExitCodeOf(e), e.Message);
        }

        using (socket)
        {
            return await ExchangeAsync(socket, "unix datagram " + path, payload, wait).ConfigureAwait(false);
        }
    }

    private static async Task<int> ExchangeAsync(Socket socket, string target, byte[]? payload, TimeSpan wait)
    {
        Console.Error.WriteLine($"echokit: sending datagrams to {target}");

        long sent = 0, received = 0;
        var stdout = StandardStreams.Output;
        stdout.WarnIfClosed("replies are not printed");
        var buffer = new byte[65_536];
        long lastSendMs = Environment.TickCount64;
        bool inputDone = false;

        // Reading stdin blocks: the sender gets a thread of its own rather than one of the pool's few.
        var sender = Task.Factory.StartNew(async () =>
        {
            try
            {
                foreach (var datagram in payload is not null ? [payload] : ReadLines(new BufferedStream(StandardStreams.OpenInput())))
                {
                    await socket.SendAsync(datagram, SocketFlags.None).ConfigureAwait(false);
                    Interlocked.Increment(ref sent);
                    Volatile.Write(ref lastSendMs, Environment.TickCount64);
                }
            }
            finally
            {
                Volatile.Write(ref lastSendMs, Environment.TickCount64);
                Volatile.Write(ref inputDone, true); // read by the receive loop on another thread
            }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();

        try
        {
            while (true)
            {
                // Wait for replies while input goes on, and for --wait after the last datagram was sent.
                long left = (long)wait.TotalMilliseconds - (Environment.TickCount64 - Volatile.Read(ref lastSendMs));
                if (Volatile.Read(ref inputDone) && (left <= 0 || Interlocked.Read(ref received) >= Interlocked.Read(ref sent)))
                {
                    break;
                }

                int n = await TimedTransfer.ReceiveAsync(socket, buffer, TimeSpan.FromMilliseconds(Math.Clamp(left, 10, 200)), throwOnTimeout: false).ConfigureAwait(false);
                if (n >= 0)
                {
                    stdout.Write(buffer.AsSpan(0, n));
                    Interlocked.Increment(ref received);
                }
            }

            await sender.ConfigureAwait(false);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            return Program.Fail(ExitCodes.ConnectionRefused,
                $"{target}: Connection refused (ECONNREFUSED): nothing listens there{(socket.AddressFamily == AddressFamily.Unix ? "" : " (ICMP port unreachable)")}");
        }
        catch (SocketException e)
        {
            return Program.Fail(ConnectCommand.ExitCodeOf(e.SocketErrorCode), $"{target}: {SocketErrorText.Describe(e.SocketErrorCode)}");
        }

        long lost = Math.Max(0, sent - received);
        if (lost > 0)
        {
            return Program.Fail(ExitCodes.TimedOut, $"{lost} of {sent} datagrams got no reply within {Durations.Format(wait)}");
        }

        Console.Error.WriteLine($"echokit: {received} of {sent} datagrams answered");
        return ExitCodes.Ok;
    }

    /// <summary>Lines of stdin, each with its newline, as datagrams.</summary>
    private static IEnumerable<byte[]> ReadLines(Stream input)
    {
        var line = new List<byte>();
        int b;
        while ((b = input.ReadByte()) >= 0)
        {
            line.Add((byte)b);
            if (b == '\n')
            {
                yield return line.ToArray();
                line.Clear();
            }
        }

        if (line.Count > 0)
        {
            yield return line.ToArray();
        }
    }
}

using System.Net;
using System.Net.Sockets;

namespace EchoKit.Tests.Infrastructure;

/// <summary>Small loopback helpers: connecting, reading exact lengths with deadlines, free ports.</summary>
public static class Loopback
{
    public static readonly TimeSpan Deadline = TimeSpan.FromSeconds(20);

    public static byte[] GreetingBytes => EchoKit.Greeting.Bytes.ToArray();

    public static async Task<Socket> ConnectAsync(IPAddress address, int port)
    {
        var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(new IPEndPoint(address, port)).WaitAsync(Deadline);
        return socket;
    }

    public static Task<Socket> ConnectAsync(int port) => ConnectAsync(IPAddress.Loopback, port);

    /// <summary>Connects to 127.0.0.1:<paramref name="port"/> from <paramref name="source"/> (any 127.x.y.z: loopback takes them all).</summary>
    public static async Task<Socket> ConnectFromAsync(string source, int port)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            socket.Bind(new IPEndPoint(IPAddress.Parse(source), 0));
            await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port)).WaitAsync(Deadline);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Reads exactly <paramref name="count"/> bytes, or fails at the deadline / on early EOF.</summary>
    public static async Task<byte[]> ReceiveExactlyAsync(Socket socket, int count, TimeSpan? deadline = null)
    {
        var buffer = new byte[count];
        using var cts = new CancellationTokenSource(deadline ?? Deadline);
        await EchoKit.Client.SocketTransfer.ReceiveExactlyAsync(socket, buffer, cts.Token);
        return buffer;
    }

    /// <summary>Reads until the peer closes (EOF), with a deadline.</summary>
    public static async Task<byte[]> ReceiveToEndAsync(Socket socket, TimeSpan? deadline = null)
    {
        using var cts = new CancellationTokenSource(deadline ?? Deadline);
        return await EchoKit.Client.SocketTransfer.ReceiveToEndAsync(socket, cts.Token);
    }

    /// <summary>A port that was free a moment ago (for third-party servers that cannot report an OS-chosen port).</summary>
    public static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }

    /// <summary>Waits until something accepts TCP connections on the port (a third-party server starting up).</summary>
    public static async Task WaitUntilListeningAsync(int port, TimeSpan deadline)
    {
        var until = DateTime.UtcNow + deadline;
        while (true)
        {
            try
            {
                using var probe = await ConnectAsync(port);
                return;
            }
            catch (SocketException) when (DateTime.UtcNow < until)
            {
                await Task.Delay(50);
            }
        }
    }

    /// <summary>
    /// Waits until a socket listens on the TCP port, without connecting to it (a server that accepts only once,
    /// as openssl s_server -naccept 1, must keep its one accept for the test): /proc/net/tcp and tcp6, state 0A.
    /// </summary>
    public static async Task WaitUntilListeningQuietlyAsync(int port, TimeSpan deadline)
    {
        string local = $":{port:X4} ";
        var until = DateTime.UtcNow + deadline;
        while (!new[] { "/proc/net/tcp", "/proc/net/tcp6" }.Any(file =>
            File.ReadLines(file).Skip(1).Any(line => line.Split(' ', StringSplitOptions.RemoveEmptyEntries) is [_, var address, _, "0A", ..] && (address + " ").EndsWith(local, StringComparison.Ordinal))))
        {
            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException($"nothing listened on TCP port {port} within {deadline}");
            }

            await Task.Delay(20);
        }
    }
}

using System.Net;
using System.Net.Sockets;

namespace EchoKit.Internal;

/// <summary>
/// --health-port: a TCP port that answers "ok" and closes, for a load balancer's health check (HAProxy's
/// <c>check port N</c>, a cloud balancer's TCP check). It answers from the moment the server is ready, and it
/// is the first thing the graceful stop closes: a balancer takes the instance out of rotation while its
/// connections drain, instead of sending it new ones.
/// </summary>
internal sealed class HealthListener : IDisposable
{
    private static readonly byte[] Ok = "ok\n"u8.ToArray();
    private readonly Socket _socket;
    private readonly Task _loop;

    private HealthListener(Socket socket)
    {
        _socket = socket;
        LocalEndPoint = (IPEndPoint)socket.LocalEndPoint!;
        _loop = Task.Run(AcceptLoopAsync);
    }

    public IPEndPoint LocalEndPoint { get; }

    public static HealthListener Open(IPAddress address, int port, bool dualStack)
    {
        var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        var endPoint = new IPEndPoint(address, port);
        try
        {
            if (address.AddressFamily == AddressFamily.InterNetworkV6)
            {
                socket.DualMode = dualStack && address.Equals(IPAddress.IPv6Any);
            }

            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(endPoint);
            socket.Listen(64);
            return new HealthListener(socket);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new ListenFailedException("bind (health)", endPoint, e.SocketErrorCode, e);
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (true)
        {
            Socket client;
            try
            {
                client = await _socket.AcceptAsync().ConfigureAwait(false);
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.OperationAborted)
            {
                return;
            }
            catch (SocketException)
            {
                await Task.Delay(100).ConfigureAwait(false); // EMFILE and the like: not a spin
                continue;
            }

            using (client)
            {
                try
                {
                    client.Send(Ok, SocketFlags.None);
                    client.Shutdown(SocketShutdown.Send);
                }
                catch (SocketException)
                {
                    // The checker is already gone.
                }
            }
        }
    }

    public void Dispose()
    {
        _socket.Dispose();
        _loop.Wait(TimeSpan.FromSeconds(2));
    }
}

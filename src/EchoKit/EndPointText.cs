using System.Net;

namespace EchoKit;

/// <summary>How addresses are written in every log line and message: IPv6 in brackets, IPv4-mapped as IPv4.</summary>
internal static class EndPointText
{
    public static string Format(EndPoint? endPoint) => endPoint switch
    {
        null => "?",
        IPEndPoint ip => Format(ip.Address, ip.Port),
        System.Net.Sockets.UnixDomainSocketEndPoint unix => "unix:" + (unix.ToString() is { Length: > 0 } path ? path : "(unnamed)"),
        _ => endPoint.ToString() ?? "?",
    };

    public static string Format(IPAddress address, int port)
    {
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        return address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6
            ? $"[{address}]:{port}"
            : $"{address}:{port}";
    }

    /// <summary>The peer of an accepted socket, or null if it is already gone (getpeername fails with ENOTCONN).</summary>
    public static EndPoint? PeerOf(System.Net.Sockets.Socket socket)
    {
        try
        {
            return Normalize(socket.RemoteEndPoint);
        }
        catch (System.Net.Sockets.SocketException)
        {
            return null;
        }
    }

    /// <summary>Normalises an accepted peer's address (dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d).</summary>
    public static EndPoint? Normalize(EndPoint? endPoint) =>
        endPoint is IPEndPoint { Address.IsIPv4MappedToIPv6: true } ip
            ? new IPEndPoint(ip.Address.MapToIPv4(), ip.Port)
            : endPoint;
}

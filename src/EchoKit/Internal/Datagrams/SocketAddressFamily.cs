using System.Buffers.Binary;
using System.Net.Sockets;

namespace EchoKit.Internal.Datagrams;

/// <summary>The family of a raw Linux sockaddr (sa_family, host byte order, in its first two bytes).</summary>
internal static class SocketAddressFamily
{
    private const ushort AF_INET = 2;
    private const ushort AF_INET6 = 10;

    public static AddressFamily Of(ReadOnlySpan<byte> sockaddr) => sockaddr.Length < 2 ? AddressFamily.Unspecified
        : BinaryPrimitives.ReadUInt16LittleEndian(sockaddr) switch
        {
            AF_INET => AddressFamily.InterNetwork,
            AF_INET6 => AddressFamily.InterNetworkV6,
            _ => AddressFamily.Unknown,
        };
}

using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Text;

namespace EchoKit.Internal.Datagrams;

/// <summary>
/// Whether a datagram's sender is the datagram socket itself. Answering such a datagram sends it back to
/// us, and the echo loops for ever (a datagram spoofed from our own address and port with a raw socket; a
/// Unix client that swaps its bound name for a link to our socket file, so that our reply comes back from
/// our own name). Checked per datagram without allocating: for UDP the port is compared first (almost
/// never equal), and only then whether the address is one of this machine's; for a Unix socket, whether
/// the sender's name is our own path.
/// </summary>
internal sealed class OwnAddress
{
    private readonly int _port = -1;
    private readonly HashSet<IPAddress> _local = [];
    private readonly byte[]? _unixPath;

    public OwnAddress(EndPoint local)
    {
        if (local is IPEndPoint ip)
        {
            _port = ip.Port;
            _local.Add(ip.Address);
            _local.Add(IPAddress.Any); // a reply to 0.0.0.0 or :: reaches this host, so a sender claiming it is us too
            _local.Add(IPAddress.IPv6Any);
            try
            {
                foreach (var nic in NetworkInterface.GetAllNetworkInterfaces())
                {
                    foreach (var unicast in nic.GetIPProperties().UnicastAddresses)
                    {
                        _local.Add(unicast.Address);
                    }
                }
            }
            catch (NetworkInformationException)
            {
                // Loopback and the bound address are still checked below.
            }
        }
        else if (local is UnixDomainSocketEndPoint unix)
        {
            _unixPath = Encoding.UTF8.GetBytes(unix.ToString());
        }
    }

    /// <summary>Whether <paramref name="bytes"/>, a sender's raw sockaddr as long as the kernel said, is this socket.</summary>
    public bool Is(ReadOnlySpan<byte> bytes)
    {
        if (_unixPath is not null)
        {
            // sockaddr_un: sun_family (2 bytes), then the path, NUL-terminated or not.
            var path = bytes[2..];
            int nul = path.IndexOf((byte)0);
            return (nul >= 0 ? path[..nul] : path).SequenceEqual(_unixPath);
        }

        return _port >= 0 && ((bytes[2] << 8) | bytes[3]) == _port && IsLocal(bytes);
    }

    /// <summary>
    /// The rare case, apart: its lambda captures <c>address</c>, and C# allocates the closure where that local's
    /// scope begins. Inline in <see cref="Is"/>, that was 24 bytes for every datagram, before the port check.
    /// </summary>
    private bool IsLocal(ReadOnlySpan<byte> bytes)
    {
        var address = SocketAddressFamily.Of(bytes) == AddressFamily.InterNetwork
            ? new IPAddress(bytes.Slice(4, 4))
            : new IPAddress(bytes.Slice(8, 16));
        if (address.IsIPv4MappedToIPv6)
        {
            address = address.MapToIPv4();
        }

        return IPAddress.IsLoopback(address) || _local.Contains(address) || _local.Contains(address.MapToIPv6())
            || (address.AddressFamily == AddressFamily.InterNetwork && _local.Any(a => a.IsIPv4MappedToIPv6 && a.MapToIPv4().Equals(address)));
    }
}

using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace EchoKit.Internal.Proxy;

/// <summary>
/// The PROXY protocol header (HAProxy's doc/proxy-protocol.txt), version 1 (a text line) and 2 (binary),
/// told apart by their signatures, read from the bytes received so far. It never guesses: bytes that are not
/// the start of a header are refused, and so is a header whose lengths or fields break the spec. The result is
/// the real client (null for LOCAL, UNKNOWN and UNSPEC: the connection's own endpoints stand) and the header's
/// length.
/// </summary>
internal static class ProxyHeader
{
    /// <summary>The longest v1 line, CRLF included.</summary>
    public const int MaxV1Bytes = 107;

    /// <summary>The v2 header we accept: 16 bytes and up to 4 KiB of addresses and TLVs (HAProxy sends far fewer).</summary>
    public const int MaxV2Bytes = 16 + 4096;

    private static ReadOnlySpan<byte> V1Signature => "PROXY "u8;

    private static ReadOnlySpan<byte> V2Signature => [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

    public readonly record struct Result(int Length, EndPoint? Client, string? Error)
    {
        public static Result NeedMore => new(-1, null, null);

        public static Result Refuse(string error) => new(-1, null, error);
    }

    public static Result Parse(ReadOnlySpan<byte> data)
    {
        int common = Math.Min(data.Length, V2Signature.Length);
        if (data[..common].SequenceEqual(V2Signature[..common]))
        {
            return data.Length < 16 ? Result.NeedMore : ParseV2(data);
        }

        common = Math.Min(data.Length, V1Signature.Length);
        if (data[..common].SequenceEqual(V1Signature[..common]))
        {
            return data.Length < V1Signature.Length ? Result.NeedMore : ParseV1(data);
        }

        return Result.Refuse($"no PROXY header: first bytes look like \"{Printable(data[..Math.Min(data.Length, 16)])}\"");
    }

    /// <summary>
    /// A header for a client to send (connect and bench --proxy-protocol): v1 text or v2 binary, TCP over IPv4, or
    /// IPv6 when either end is (an IPv4 end then written IPv4-mapped).
    /// </summary>
    public static byte[] Build(int version, IPEndPoint source, IPEndPoint destination)
    {
        var (from, to) = (Plain(source.Address), Plain(destination.Address));
        bool v6 = from.AddressFamily == AddressFamily.InterNetworkV6 || to.AddressFamily == AddressFamily.InterNetworkV6;
        if (v6)
        {
            (from, to) = (from.MapToIPv6(), to.MapToIPv6());
        }

        if (version == 1)
        {
            return Encoding.ASCII.GetBytes(string.Create(CultureInfo.InvariantCulture,
                $"PROXY {(v6 ? "TCP6" : "TCP4")} {from} {to} {source.Port} {destination.Port}\r\n"));
        }

        int addressBytes = v6 ? 16 : 4;
        var header = new byte[16 + (2 * addressBytes) + 4];
        V2Signature.CopyTo(header);
        header[12] = 0x21; // version 2, PROXY
        header[13] = v6 ? (byte)0x21 : (byte)0x11; // INET6 or INET, STREAM
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(14), (ushort)((2 * addressBytes) + 4));
        from.TryWriteBytes(header.AsSpan(16), out _);
        to.TryWriteBytes(header.AsSpan(16 + addressBytes), out _);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(16 + (2 * addressBytes)), (ushort)source.Port);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(18 + (2 * addressBytes)), (ushort)destination.Port);
        return header;
    }

    private static IPAddress Plain(IPAddress address) => address.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;

    private static Result ParseV1(ReadOnlySpan<byte> data)
    {
        int end = data[..Math.Min(data.Length, MaxV1Bytes)].IndexOf("\r\n"u8);
        if (end < 0)
        {
            return data.Length >= MaxV1Bytes ? Result.Refuse($"PROXY v1 line longer than {MaxV1Bytes} bytes") : Result.NeedMore;
        }

        string line = Encoding.ASCII.GetString(data[..end]);
        string[] fields = line.Split(' ');
        if (fields.Length >= 2 && fields[1] == "UNKNOWN")
        {
            return new Result(end + 2, null, null); // the sender does not know: the connection's own endpoints stand
        }

        if (fields.Length != 6 || fields[1] is not ("TCP4" or "TCP6"))
        {
            return Result.Refuse($"bad PROXY v1 line \"{Printable(data[..end])}\": expected PROXY TCP4|TCP6 SRC DST SPORT DPORT, or PROXY UNKNOWN");
        }

        var family = fields[1] == "TCP4" ? AddressFamily.InterNetwork : AddressFamily.InterNetworkV6;
        if (!TryAddress(fields[2], family, out var source) || !TryAddress(fields[3], family, out _)
            || !TryPort(fields[4], out int sourcePort) || !TryPort(fields[5], out _))
        {
            return Result.Refuse($"bad PROXY v1 line \"{Printable(data[..end])}\": an address or port that is not {fields[1]}'s");
        }

        return new Result(end + 2, new IPEndPoint(source!, sourcePort), null);
    }

    private static bool TryAddress(string text, AddressFamily family, out IPAddress? address) =>
        IPAddress.TryParse(text, out address) && address.AddressFamily == family && !text.Contains('%', StringComparison.Ordinal)
        && (family != AddressFamily.InterNetwork || text.Count(c => c == '.') == 3);

    private static bool TryPort(string text, out int port)
    {
        port = -1;
        return text.Length is > 0 and <= 5 && text.All(char.IsAsciiDigit) && (text.Length == 1 || text[0] != '0')
            && int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out port) && port <= 65535;
    }

    private static Result ParseV2(ReadOnlySpan<byte> data)
    {
        int version = data[12] >> 4, command = data[12] & 0x0F;
        if (version != 2)
        {
            return Result.Refuse($"PROXY v2 header with version {version}");
        }

        if (command > 1)
        {
            return Result.Refuse($"PROXY v2 header with command {command} (0 LOCAL and 1 PROXY exist)");
        }

        int length = BinaryPrimitives.ReadUInt16BigEndian(data[14..]);
        if (16 + length > MaxV2Bytes)
        {
            return Result.Refuse($"PROXY v2 header of {16 + length} bytes (at most {MaxV2Bytes} accepted)");
        }

        if (data.Length < 16 + length)
        {
            return Result.NeedMore;
        }

        var body = data.Slice(16, length);
        int family = data[13] >> 4;
        if (command == 0)
        {
            return new Result(16 + length, null, null); // LOCAL: a health check from the proxy itself; what follows the length is skipped
        }

        (int addressBytes, EndPoint? client) = family switch
        {
            1 when length >= 12 => (12, new IPEndPoint(new IPAddress(body[..4]), BinaryPrimitives.ReadUInt16BigEndian(body[8..]))),
            2 when length >= 36 => (36, new IPEndPoint(new IPAddress(body[..16]), BinaryPrimitives.ReadUInt16BigEndian(body[32..]))),
            3 when length >= 216 => (216, UnixPeer(body[..108])),
            0 => (0, null), // UNSPEC: the connection's own endpoints stand
            1 or 2 or 3 => (-1, null),
            _ => (-2, null),
        };
        if (addressBytes == -1)
        {
            return Result.Refuse($"PROXY v2 header of {length} bytes is too short for its address family {family}");
        }

        if (addressBytes == -2)
        {
            return Result.Refuse($"PROXY v2 header with address family {family} (0 UNSPEC, 1 INET, 2 INET6, 3 UNIX exist)");
        }

        // TLVs: type, 16-bit length, value; each must fit in the header (they are skipped, never trusted).
        var tlvs = body[addressBytes..];
        while (tlvs.Length > 0)
        {
            if (tlvs.Length < 3 || 3 + BinaryPrimitives.ReadUInt16BigEndian(tlvs[1..]) > tlvs.Length)
            {
                return Result.Refuse("PROXY v2 header with a TLV that runs past the header's length");
            }

            tlvs = tlvs[(3 + BinaryPrimitives.ReadUInt16BigEndian(tlvs[1..]))..];
        }

        return new Result(16 + length, client, null);
    }

    private static EndPoint? UnixPeer(ReadOnlySpan<byte> path)
    {
        int nul = path.IndexOf((byte)0);
        var name = nul >= 0 ? path[..nul] : path;
        return name.Length == 0 ? null : new UnixDomainSocketEndPoint(Encoding.UTF8.GetString(name));
    }

    private static string Printable(ReadOnlySpan<byte> bytes) => PrintableBytes.Of(bytes);
}

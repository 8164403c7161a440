using System.Buffers.Binary;
using System.Globalization;
using System.Net;

namespace EchoKit.Internal.Access;

/// <summary>
/// --allow and --deny: which source addresses may connect (or send datagrams). Deny wins: an address that
/// matches any deny rule is refused even if an allow rule matches it too (the safer reading of a conflict, as
/// nginx's first-match order cannot express once rules come from several files). When allow rules exist, an
/// address must match one of them. IPv4 rules match IPv4-mapped IPv6 peers (a dual-stack socket's view of an
/// IPv4 client). Every address is held as 16 bytes (IPv4 as ::ffff:a.b.c.d), so a check is a few masked
/// compares and allocates nothing.
/// </summary>
internal sealed class AddressRules
{
    private readonly Rule[] _allow;
    private readonly Rule[] _deny;

    private AddressRules(Rule[] allow, Rule[] deny)
    {
        _allow = allow;
        _deny = deny;
    }

    /// <summary>One CIDR: the network's 128 bits, the prefix in 128-bit terms, and the text the user wrote.</summary>
    public sealed record Rule(UInt128 Network, UInt128 Mask, string Text, bool Deny)
    {
        public long Refused;
        public long LastLoggedMs = long.MinValue / 2;
    }

    public bool IsEmpty => _allow.Length == 0 && _deny.Length == 0;

    /// <summary>Parses the rules; an invalid one throws <see cref="FormatException"/> naming it (and its file and line).</summary>
    public static AddressRules Parse(IEnumerable<(string Text, string Where)> allow, IEnumerable<(string Text, string Where)> deny) =>
        new(allow.Select(r => ParseRule(r.Text, r.Where, deny: false)).ToArray(), deny.Select(r => ParseRule(r.Text, r.Where, deny: true)).ToArray());

    /// <summary>The CIDRs of a file: one a line, # starts a comment, blank lines ignored. Each with "FILE:LINE".</summary>
    public static IEnumerable<(string Text, string Where)> ReadFile(string path)
    {
        string[] lines;
        try
        {
            lines = TextFile.ReadLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            string why = EchoKit.Internal.FileErrorText.Describe(e);
            throw new FormatException($"cannot read {path}: {why}");
        }

        for (int i = 0; i < lines.Length; i++)
        {
            string text = lines[i];
            int hash = text.IndexOf('#', StringComparison.Ordinal);
            text = (hash >= 0 ? text[..hash] : text).Trim();
            if (text.Length > 0)
            {
                yield return (text, $"{path}:{i + 1}");
            }
        }
    }

    private static Rule ParseRule(string text, string where, bool deny)
    {
        int slash = text.IndexOf('/', StringComparison.Ordinal);
        string addressText = slash >= 0 ? text[..slash] : text;
        if (!IPAddress.TryParse(addressText, out var address) || addressText.Contains('%', StringComparison.Ordinal))
        {
            throw new FormatException($"invalid {where} '{text}': not an IPv4 or IPv6 address (expected CIDR such as 10.0.0.0/8 or 2001:db8::/32)");
        }

        bool v4 = address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork;
        int max = v4 ? 32 : 128;
        int prefix = max;
        if (slash >= 0 && (!int.TryParse(text.AsSpan(slash + 1), NumberStyles.None, CultureInfo.InvariantCulture, out prefix) || prefix > max))
        {
            throw new FormatException($"invalid {where} '{text}': the prefix length must be 0 to {max}");
        }

        UInt128 value = ToKey(address);
        int bits = v4 ? 96 + prefix : prefix;
        UInt128 mask = bits == 0 ? UInt128.Zero : UInt128.MaxValue << (128 - bits);
        if ((value & ~mask) != UInt128.Zero)
        {
            throw new FormatException($"invalid {where} '{text}': host bits are set (did you mean {ToAddress(value & mask, v4)}/{prefix}?)");
        }

        return new Rule(value & mask, mask, text, deny);
    }

    /// <summary>The address as 128 bits, IPv4 mapped (::ffff:a.b.c.d), so one rule form serves both families.</summary>
    public static UInt128 ToKey(IPAddress address)
    {
        Span<byte> bytes = stackalloc byte[16];
        if (address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork)
        {
            bytes[..10].Clear();
            bytes[10] = 0xFF;
            bytes[11] = 0xFF;
            address.TryWriteBytes(bytes[12..], out _);
        }
        else
        {
            address.TryWriteBytes(bytes, out _);
        }

        return BinaryPrimitives.ReadUInt128BigEndian(bytes);
    }

    /// <summary>The key of a raw sockaddr_in or sockaddr_in6 (a datagram's sender); null for other families.</summary>
    public static UInt128? ToKey(ReadOnlySpan<byte> sockaddr)
    {
        switch (Datagrams.SocketAddressFamily.Of(sockaddr))
        {
            case System.Net.Sockets.AddressFamily.InterNetwork:
                return ((UInt128)0xFFFF << 32) | BinaryPrimitives.ReadUInt32BigEndian(sockaddr.Slice(4, 4));
            case System.Net.Sockets.AddressFamily.InterNetworkV6:
                return BinaryPrimitives.ReadUInt128BigEndian(sockaddr.Slice(8, 16));
            default:
                return null;
        }
    }

    private static string ToAddress(UInt128 key, bool v4)
    {
        Span<byte> bytes = stackalloc byte[16];
        BinaryPrimitives.WriteUInt128BigEndian(bytes, key);
        return (v4 ? new IPAddress(bytes[12..]) : new IPAddress(bytes)).ToString();
    }

    /// <summary>The rule that refuses <paramref name="key"/> (a deny rule, or none of the allow rules matched: null rule), or allowed.</summary>
    public bool Allows(UInt128 key, out Rule? refusedBy)
    {
        foreach (var rule in _deny)
        {
            if ((key & rule.Mask) == rule.Network)
            {
                refusedBy = rule;
                return false;
            }
        }

        refusedBy = null;
        if (_allow.Length == 0)
        {
            return true;
        }

        foreach (var rule in _allow)
        {
            if ((key & rule.Mask) == rule.Network)
            {
                return true;
            }
        }

        return false;
    }
}

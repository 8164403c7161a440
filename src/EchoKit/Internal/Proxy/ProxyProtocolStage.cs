using System.Net;
using EchoKit.Internal.Access;
using EchoKit.Internal.Stages;

namespace EchoKit.Internal.Proxy;

/// <summary>
/// PROXY protocol as the first prefix stage: peers in --proxy-from (the load balancers) must start with a v1 or
/// v2 header, which is read whole however it is split (<see cref="PrefixReader"/>) and replaces the peer with the
/// real client; anyone else is served as is, and a header from them is not honoured (it is just their first
/// bytes): the spec forbids guessing whether a header is there. A header that is malformed, longer than the
/// spec allows or not complete within the timeout refuses the connection with the reason.
/// </summary>
internal sealed class ProxyProtocolStage(AddressRules trusted, TimeSpan timeout) : IPrefixStage
{
    public string Name => "proxy";

    public int MaxPrefixBytes => ProxyHeader.MaxV2Bytes;

    public TimeSpan Timeout => timeout;

    public StageVerdict OnAccepted(ConnectionContext connection) => StageVerdict.Continue;

    public bool AppliesTo(ConnectionContext connection) =>
        connection.Peer is IPEndPoint ip && trusted.Allows(AddressRules.ToKey(ip.Address), out _);

    public PrefixVerdict OnPrefix(ReadOnlySpan<byte> received, ConnectionContext connection)
    {
        var header = ProxyHeader.Parse(received);
        if (header.Error is { } error)
        {
            return PrefixVerdict.Refuse($"proxy: {error}");
        }

        if (header.Length < 0)
        {
            return PrefixVerdict.NeedMore;
        }

        if (header.Client is { } client)
        {
            connection.Peer = client;
        }

        return PrefixVerdict.Done(header.Length);
    }
}

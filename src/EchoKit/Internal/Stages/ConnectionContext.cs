using System.Net;

namespace EchoKit.Internal.Stages;

/// <summary>What a stage knows of a new connection, and may change.</summary>
internal sealed class ConnectionContext(long id, int descriptor, EndPoint? peer)
{
    public long Id { get; } = id;

    /// <summary>The accepted socket's descriptor (read its options; never close it).</summary>
    public int Descriptor { get; } = descriptor;

    /// <summary>The peer as logs, limits and close events will see it; a stage may replace it.</summary>
    public EndPoint? Peer { get; set; } = peer;

    /// <summary>The peer the socket was accepted from (a load balancer, when a stage has named the client behind it).</summary>
    public EndPoint? AcceptedFrom { get; } = peer;
}

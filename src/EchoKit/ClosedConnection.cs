using System.Net;
using System.Net.Sockets;

namespace EchoKit;

/// <summary>What is known of a connection when it has closed.</summary>
public sealed record ClosedConnection(
    long Id,
    EndPoint? Peer,
    CloseReason Reason,
    SocketError Error,
    long BytesIn,
    long BytesOut,
    TimeSpan Duration)
{
    /// <summary>Why, in words, where the reason alone does not say it (a stage's refusal).</summary>
    public string? Detail { get; init; }
}

namespace EchoKit.Client;

/// <summary>The peer closed the connection before the expected number of bytes arrived.</summary>
public sealed class PeerClosedException(int expected, int received)
    : EndOfStreamException($"connection closed by peer after {received} of {expected} bytes")
{
    public int Expected { get; } = expected;

    public int Received { get; } = received;
}

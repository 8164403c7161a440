namespace EchoKit;

/// <summary>
/// Receives a copy of every byte the server receives (the CLI writes them to stdout).
/// The returned task completing is the backpressure: the connection does not read again until it has.
/// </summary>
public interface IPayloadSink
{
    ValueTask WriteAsync(long connectionId, ReadOnlyMemory<byte> payload);
}

namespace EchoKit;

/// <summary>
/// Receives a copy of every byte the server receives (the CLI writes them to stdout).
/// The returned task completing is the backpressure: the connection does not read again until it has.
/// </summary>
public interface IPayloadSink
{
    /// <summary>Takes a copy of <paramref name="payload"/> before it returns; completes when there is room for more.</summary>
    ValueTask WriteAsync(long connectionId, ReadOnlyMemory<byte> payload);

    /// <summary>
    /// Runs <paramref name="then"/> once every payload handed over so far has been written out: the server
    /// logs a connection's "closed" line this way, so that it never comes before that connection's bytes.
    /// It must not block the caller (an event loop). The default runs it at once.
    /// </summary>
    void AfterWritten(Action then) => then();
}

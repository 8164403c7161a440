namespace EchoKit.Internal.Stages;

/// <summary>
/// A stage that wraps the connection's byte stream (TLS is the model: a handshake, then every byte through the
/// wrapper). It runs after the prefix stages, before the greeting; the greeting and the echo then go through the
/// stream it returns. Connections of a server with such a stage are served by the Socket engine's stream loop
/// (<see cref="Sockets.EchoConnection"/>), also when the epoll engine accepted them: it hands them over. A wrap
/// that fails, or does not finish within <see cref="Timeout"/>, refuses the connection with the reason.
/// </summary>
internal interface IStreamStage : IConnectionStage
{
    /// <summary>What a refusal's reason starts with ("tls: …").</summary>
    string Name => GetType().Name;

    /// <summary>How long the wrap (a handshake) may take.</summary>
    TimeSpan Timeout { get; }

    /// <summary>
    /// Wraps <paramref name="transport"/> (the socket, after any prefix; it owns nothing); the returned stream
    /// carries the connection from here on. Throw (IOException, AuthenticationException …) to refuse, with the
    /// message as the reason.
    /// </summary>
    ValueTask<Stream> WrapAsync(Stream transport, ConnectionContext connection, CancellationToken cancellationToken);
}

namespace EchoKit.Internal.Stages;

/// <summary>
/// One step that every new stream connection goes through after admission (the limits) and before its
/// greeting, in the order of <see cref="EchoServerOptions.Stages"/>, on whichever engine serves it (Kestrel's
/// connection middleware is the model). A stage may replace the peer's address (the real client behind a load
/// balancer) or refuse the connection with a reason, which reaches the log line and the close reason
/// (<see cref="CloseReason.Refused"/>). Runs on the accepting thread: it must not block.
///
/// A stage that must read the connection's first bytes before deciding (PROXY protocol) implements
/// <see cref="IPrefixStage"/> too; one that wraps the byte stream (TLS) implements <see cref="IStreamStage"/>.
/// </summary>
internal interface IConnectionStage
{
    StageVerdict OnAccepted(ConnectionContext connection);
}

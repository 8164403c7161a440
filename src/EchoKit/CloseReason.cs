namespace EchoKit;

/// <summary>
/// Why a connection ended. Logs, metrics and tests all read this one value
/// (after Pipelines.Sockets.Unofficial's PipeShutdownKind).
/// </summary>
public enum CloseReason
{
    /// <summary>Still open.</summary>
    None = 0,
    /// <summary>The peer shut down its send side (FIN) and everything it sent was echoed.</summary>
    PeerClosed,
    /// <summary>The peer reset the connection (ECONNRESET, EPIPE).</summary>
    PeerReset,
    /// <summary>The server is shutting down and closed the connection gracefully.</summary>
    ServerShutdown,
    /// <summary>The server shut down and the connection did not finish within the shutdown timeout.</summary>
    ShutdownTimeout,
    /// <summary>No byte was received for the idle timeout.</summary>
    IdleTimeout,
    /// <summary>The peer did not read, so the server could not send for the send timeout.</summary>
    SendTimeout,
    /// <summary>Refused at accept time because the connection limit was reached.</summary>
    ServerBusy,
    /// <summary>A socket error other than a reset; see the recorded <see cref="System.Net.Sockets.SocketError"/>.</summary>
    Error,
    /// <summary>Refused by a connection stage before the greeting; <see cref="ClosedConnection.Detail"/> says why.</summary>
    Refused,
}

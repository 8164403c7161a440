namespace EchoKit.Internal.Stages;

/// <summary>
/// A stage's answer: go on, or refuse the connection and say why. A refusal may carry a line for the peer
/// (admission's <c>server busy: N connections</c>); otherwise the connection is closed with nothing sent.
/// </summary>
internal readonly record struct StageVerdict(string? RefusedBecause, CloseReason Reason = CloseReason.Refused, byte[]? Reply = null, bool Quiet = false)
{
    public static StageVerdict Continue => default;

    public static StageVerdict Refuse(string reason) => new(reason);

    /// <summary>Refused with no "closed" line: the stage counts and logs such refusals itself, at most once a second.</summary>
    public static StageVerdict RefuseQuietly(string reason) => new(reason, Quiet: true);

    /// <summary>Admission's refusal: over the connection limit, or too close to the descriptor limit.</summary>
    public static StageVerdict Busy(byte[] line) => new("server busy", CloseReason.ServerBusy, line);

    /// <summary>Accepted in the instant the server stopped: closed, not reported.</summary>
    public static StageVerdict Stopping => new("stopping", CloseReason.ServerShutdown);

    public bool Refused => RefusedBecause is not null;
}

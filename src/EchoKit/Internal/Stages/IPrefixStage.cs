namespace EchoKit.Internal.Stages;

/// <summary>
/// A stage that reads the first bytes of a connection before the greeting (the PROXY protocol header is the
/// model): it is handed everything received so far, from the first byte, and says whether it needs more, has
/// read its prefix (and how many bytes that took), or refuses. Headers split across any number of segments
/// are read whole; what follows the prefix is the client's payload, echoed once and never lost. A prefix
/// longer than <see cref="MaxPrefixBytes"/>, or not complete within <see cref="Timeout"/>, refuses the
/// connection. Both engines run it; see <see cref="PrefixReader"/>.
/// </summary>
internal interface IPrefixStage : IConnectionStage
{
    /// <summary>What a refusal's reason starts with ("proxy: …").</summary>
    string Name => GetType().Name;

    /// <summary>
    /// Whether this connection has a prefix for this stage at all (PROXY: only peers that may send one); decided
    /// at accept, so that a connection with no prefix to read gets its greeting at once.
    /// </summary>
    bool AppliesTo(ConnectionContext connection) => true;

    /// <summary>The longest prefix this stage reads (a PROXY v1 line is at most 107 bytes).</summary>
    int MaxPrefixBytes { get; }

    /// <summary>How long the prefix may take to arrive.</summary>
    TimeSpan Timeout { get; }

    /// <summary>Decides on the bytes received so far; may set <see cref="ConnectionContext.Peer"/>.</summary>
    PrefixVerdict OnPrefix(ReadOnlySpan<byte> received, ConnectionContext connection);
}

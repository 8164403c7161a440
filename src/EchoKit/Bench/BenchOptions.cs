namespace EchoKit.Bench;

/// <summary>One load run: who to hit and how.</summary>
public sealed record BenchOptions
{
    public required string Host { get; init; }

    public int Port { get; init; } = 8888;

    /// <summary>UDP datagrams instead of a TCP stream: <see cref="Depth"/> in flight per flow, each checked whole; one not back within <see cref="UdpTimeout"/> is lost.</summary>
    public bool Udp { get; init; }

    /// <summary>UDP: a datagram not echoed within this long counts as lost, and its flow goes on.</summary>
    public TimeSpan UdpTimeout { get; init; } = TimeSpan.FromMilliseconds(200);

    /// <summary>Load a Unix domain stream socket at this path instead of Host:Port.</summary>
    public string? UnixPath { get; init; }

    /// <summary>Connections, all active.</summary>
    public int Connections { get; init; } = 50;

    /// <summary>Bytes per message.</summary>
    public int MessageSize { get; init; } = 64;

    /// <summary>Messages in flight per connection; 1 is ping-pong.</summary>
    public int Depth { get; init; } = 1;

    public TimeSpan Duration { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Load before measuring starts (connections warm, JIT done).</summary>
    public TimeSpan Warmup { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Open loop: messages per second in total, sent on schedule whether or not replies came back,
    /// with latency measured from the scheduled time (no coordinated omission). Null: closed loop.
    /// </summary>
    public double? Rate { get; init; }

    /// <summary>Greeting bytes to read and discard after connecting; null: detect (wait briefly for unsolicited bytes).</summary>
    public int? SkipGreeting { get; init; }

    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>TLS on every connection (driven by async calls through SslStream); the server is verified as <c>connect --tls</c> does.</summary>
    public bool Tls { get; init; }

    /// <summary>How the server's certificate is checked, and the client certificate (null with <see cref="Tls"/>: the system's trust store).</summary>
    internal Client.TlsClientOptions? TlsClient { get; init; }

    /// <summary>
    /// Handshake rate: each connection connects (and with <see cref="Tls"/> completes a handshake), reads the
    /// greeting, echoes one message and closes, again and again; a message is one such cycle.
    /// </summary>
    public bool Reconnect { get; init; }

    /// <summary>Send a PROXY protocol header (1 or 2) first on every connection, naming its own endpoints; null: none.</summary>
    internal int? ProxyHeaderVersion { get; init; }

    /// <summary>A connection with messages in flight and no byte back for this long has stopped echoing.</summary>
    public TimeSpan EchoTimeout { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>How TCP and Unix stream connections are driven: epoll loops (Linux x86-64) or async Socket calls.</summary>
    public EchoEngine Engine { get; init; } = EchoEngine.Auto;

    /// <summary>Seed of the payload pattern, so runs are repeatable.</summary>
    public int Seed { get; init; } = 1;
}

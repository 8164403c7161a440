namespace EchoKit.Bench;

/// <summary>What a run measured, with echoload's names and meanings.</summary>
public sealed record BenchResult
{
    public int Connections { get; init; }

    public int MessageSize { get; init; }

    public int Depth { get; init; }

    /// <summary>Length of the measuring window.</summary>
    public double Seconds { get; init; }

    /// <summary>Messages whose last byte came back inside the window.</summary>
    public long Messages { get; init; }

    public double MessagesPerSecond => Seconds > 0 ? Messages / Seconds : 0;

    /// <summary>Echoed payload, one direction, in 10^6 bytes per second.</summary>
    public double MegabytesPerSecond => MessagesPerSecond * MessageSize / 1e6;

    public double P50Us { get; init; }

    public double P90Us { get; init; }

    public double P99Us { get; init; }

    public double P999Us { get; init; }

    public double MaxUs { get; init; }

    /// <summary>Connections that failed or were dropped during the run, plus scheduling overruns in open loop.</summary>
    public long Errors { get; init; }

    /// <summary>Echoed bytes that differed from what was sent (or came back unasked).</summary>
    public long Mismatches { get; init; }

    public int ConnectFailures { get; init; }

    /// <summary>Connections that stopped echoing: messages in flight and no byte back for the echo timeout (or none at all).</summary>
    public int NoEcho { get; init; }

    /// <summary>The server sent bytes nobody asked for (a greeting that was not skipped, or not an echo server).</summary>
    public bool Unsolicited { get; init; }

    /// <summary>Connections still working when the window closed.</summary>
    public int ActiveAtEnd { get; init; }

    /// <summary>A UDP (or Unix datagram) run: <see cref="Lost"/>, <see cref="Late"/> and <see cref="Reordered"/> apply.</summary>
    public bool Udp { get; init; }

    /// <summary>UDP: datagrams not echoed within <see cref="UdpTimeoutMs"/> (measured window).</summary>
    public long Lost { get; init; }

    /// <summary>UDP: echoes that came after their datagram was counted lost, or twice.</summary>
    public long Late { get; init; }

    /// <summary>UDP: on-time echoes that came back after a datagram sent later.</summary>
    public long Reordered { get; init; }

    /// <summary>UDP: lost datagrams as a share of those echoed or lost, in percent.</summary>
    public double LostPercent => Messages + Lost > 0 ? 100.0 * Lost / (Messages + Lost) : 0;

    public double UdpTimeoutMs { get; init; }
}

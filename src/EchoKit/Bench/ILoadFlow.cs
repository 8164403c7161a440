namespace EchoKit.Bench;

/// <summary>One benchmark flow (a TCP connection or a UDP socket), as the generator sees it.</summary>
internal interface ILoadFlow
{
    long MeasuredMessages { get; }

    long Mismatches { get; }

    /// <summary>Open loop: scheduling overruns.</summary>
    long Overruns { get; }

    /// <summary>UDP: datagrams not echoed within the loss timeout (measured window).</summary>
    long Lost => 0;

    /// <summary>UDP: echoes that came after their datagram was counted lost, or twice (measured window).</summary>
    long Late => 0;

    /// <summary>UDP: on-time echoes that came back after one sent later (measured window).</summary>
    long Reordered => 0;

    /// <summary>UDP: a flow that is still open and never got an echo.</summary>
    bool Silent => false;

    bool Failed { get; }

    /// <summary>Messages sent whose echo has not come back yet (0 for UDP, whose losses are counted as they happen).</summary>
    long InFlight { get; }

    /// <summary>Stopwatch timestamp of the last echoed byte; 0 if none came back yet.</summary>
    long LastReceiveTimestamp { get; }

    /// <summary>The server sent more than was asked (a greeting the run did not skip, or not an echo server).</summary>
    bool Unsolicited { get; }

    Task RunAsync();

    void Close();
}

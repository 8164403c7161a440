namespace EchoKit.Bench;

/// <summary>One benchmark flow (a TCP connection or a UDP socket), as the generator sees it.</summary>
internal interface ILoadFlow
{
    long MeasuredMessages { get; }

    long Mismatches { get; }

    /// <summary>Open loop: scheduling overruns; UDP: datagrams whose reply was lost.</summary>
    long Overruns { get; }

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

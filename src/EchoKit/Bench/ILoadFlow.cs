namespace EchoKit.Bench;

/// <summary>One benchmark flow (a TCP connection or a UDP socket), as the generator sees it.</summary>
internal interface ILoadFlow
{
    long MeasuredMessages { get; }

    long Mismatches { get; }

    /// <summary>Open loop: scheduling overruns; UDP: datagrams whose reply was lost.</summary>
    long Overruns { get; }

    bool Failed { get; }

    Task RunAsync();

    void Close();
}

namespace EchoKit;

/// <summary>The three lines of the classic Linux-sockets tutorial server, sent on every connection.</summary>
public static class Greeting
{
    /// <summary>Exactly the tutorial's bytes, 181 in all (two of the lines end in " \n" and one in "\n").</summary>
    public static ReadOnlyMemory<byte> Bytes { get; } =
        "Hello Client , I have received your connection. And now I will assign a handler for you\n"u8.ToArray()
            .Concat("Greetings! I am your connection handler\n"u8.ToArray())
            .Concat("Now type something and i shall repeat what you type \n"u8.ToArray())
            .ToArray();
}

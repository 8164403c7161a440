namespace EchoKit;

/// <summary>The machinery behind stream connections.</summary>
public enum EchoEngine
{
    /// <summary>Epoll where it runs (Linux x86-64), else Socket.</summary>
    Auto,
    /// <summary>Our own epoll event loops over non-blocking descriptors: the fastest, Linux x86-64 only.</summary>
    Epoll,
    /// <summary>.NET's portable Socket API (async waits, non-blocking calls): runs everywhere.</summary>
    Socket,
}

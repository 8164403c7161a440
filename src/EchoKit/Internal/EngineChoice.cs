using EchoKit.Internal.Epoll;

namespace EchoKit.Internal;

/// <summary>Which engine serves (and, for bench, drives) stream connections: decided here only.</summary>
internal static class EngineChoice
{
    /// <summary>True for the epoll engine; asking for it where it cannot run is an error.</summary>
    public static bool UsesEpoll(EchoEngine requested) => requested switch
    {
        EchoEngine.Socket => false,
        EchoEngine.Epoll => Native.IsSupported ? true : throw new PlatformNotSupportedException("The epoll engine runs on Linux x86-64 only."),
        _ => Native.IsSupported,
    };
}

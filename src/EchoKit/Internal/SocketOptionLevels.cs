namespace EchoKit.Internal;

/// <summary>Linux values for options that .NET does not expose one by one.</summary>
internal static class SocketOptionLevels
{
    public const int SolSocket = 1;
    public const int SoReuseAddr = 2;
}

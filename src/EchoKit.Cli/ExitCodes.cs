namespace EchoKit.Cli;

/// <summary>Exit codes of every echokit command (documented in the README).</summary>
internal static class ExitCodes
{
    public const int Ok = 0;
    public const int Error = 1;
    public const int Usage = 2;
    public const int CannotListen = 3;
    public const int HostNotFound = 4;
    public const int ConnectionRefused = 5;
    public const int TimedOut = 6;
    public const int ConnectionReset = 7;
    public const int ShortRead = 8;
    public const int BenchMismatch = 9;
    public const int BenchConnectionsFailed = 10;
    public const int BenchNoEcho = 11;
    public const int TlsFailed = 12;
}

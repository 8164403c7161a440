using System.CommandLine;
using EchoKit.Internal;
using Microsoft.Extensions.Logging;

namespace EchoKit.Cli;

/// <summary>--hex-dump FILE|- for serve and connect: the option, and the dump it opens.</summary>
internal static class HexDumpOption
{
    public static Option<string?> Create(string what) => new("--hex-dump")
    {
        Description = $"Write every byte {what}, each way, as a hex dump text2pcap turns into a pcap (-: stdout, instead of the received bytes); it never slows the echo: past 8 MiB behind, chunks are dropped and the gap marked",
        HelpName = "file|-",
    };

    /// <summary>The dump on <paramref name="path"/> (created or truncated; "-": stdout), or why it cannot be opened.</summary>
    public static (HexDump? Dump, string? Error) Open(string path, ILogger logger)
    {
        if (path == "-")
        {
            return StandardStreams.OpenOutput() is { } stdout ? (new HexDump(stdout, "stdout", logger), null) : (null, "--hex-dump -: stdout is closed");
        }

        if (Directory.Exists(path))
        {
            return (null, $"--hex-dump {path}: cannot write it: Is a directory (EISDIR)");
        }

        try
        {
            var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.Read, bufferSize: 1);
            return (new HexDump(file, path, logger), null);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return (null, $"--hex-dump {path}: cannot write it: {FileErrorText.Describe(e)}");
        }
    }
}

/// <summary>For the client's commands, which write "echokit: warning: …" lines rather than the server's log.</summary>
internal sealed class WarningLineLogger : ILogger
{
    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel) && StandardStreams.ErrorOpen)
        {
            Console.Error.WriteLine($"echokit: warning: {formatter(state, exception)}");
        }
    }
}

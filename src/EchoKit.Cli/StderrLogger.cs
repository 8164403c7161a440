using System.Text;
using Microsoft.Extensions.Logging;

namespace EchoKit.Cli;

/// <summary>
/// The server's event log: one line per event on stderr, in the layout of Microsoft.Extensions.Logging's
/// single-line SimpleConsole format (<c>17:03:56.101 info: echokit[2] connection 1 accepted from ...</c>),
/// the level coloured on a terminal. Written here rather than taken from Microsoft.Extensions.Logging.Console
/// because that one builds a dependency-injection container and options/configuration machinery at start:
/// about a third of the time to the listening line. An exception is reduced to its message: no stack traces.
///
/// The server never waits for stderr: lines go through a bounded queue to one writer thread, each line one
/// write(2). If stderr is not being read (a pipe nobody drains) and the queue is full, lines are dropped
/// and counted, and the count is reported once stderr moves again; an event loop must never block on a
/// log line. <see cref="Flush"/> at exit writes what is queued.
/// </summary>
internal sealed class StderrLogger : ILogger, IDisposable
{
    private const int QueueLines = 4096;

    private readonly string _category;
    private readonly LogLevel _minimum;
    private readonly Stream _stderr = StandardStreams.ErrorOpen ? Console.OpenStandardError() : Stream.Null;
    private readonly bool _colors = !Console.IsErrorRedirected && Environment.GetEnvironmentVariable("NO_COLOR") is null;
    private readonly System.Threading.Channels.Channel<byte[]> _queue =
        System.Threading.Channels.Channel.CreateBounded<byte[]>(new System.Threading.Channels.BoundedChannelOptions(QueueLines)
        {
            SingleReader = true,
            FullMode = System.Threading.Channels.BoundedChannelFullMode.Wait, // TryWrite fails when full: we drop and count
        });

    private readonly Thread _writer;
    private long _dropped;

    public StderrLogger(string category, LogLevel minimum)
    {
        _category = category;
        _minimum = minimum;
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = "echokit-log" };
        _writer.Start();
    }

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None && logLevel >= _minimum;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel))
        {
            Write(logLevel, eventId, formatter(state, exception), exception);
        }
    }

    /// <summary>A line written whatever the level (where the server listens, below --log-level Warning).</summary>
    public void WriteAnyway(LogLevel logLevel, int eventId, string message) => Write(logLevel, eventId, message, null);

    private void Write(LogLevel logLevel, EventId eventId, string message, Exception? exception)
    {
        var line = new StringBuilder(128)
            .Append(DateTime.Now.ToString("HH:mm:ss.fff ", System.Globalization.CultureInfo.InvariantCulture));
        string level = logLevel switch
        {
            LogLevel.Trace => "trce",
            LogLevel.Debug => "dbug",
            LogLevel.Information => "info",
            LogLevel.Warning => "warn",
            LogLevel.Error => "fail",
            _ => "crit",
        };
        if (_colors)
        {
            string color = logLevel switch
            {
                LogLevel.Information => "\u001b[32m",
                LogLevel.Warning => "\u001b[33m",
                >= LogLevel.Error => "\u001b[31m",
                _ => "\u001b[90m",
            };
            line.Append(color).Append(level).Append("\u001b[39m");
        }
        else
        {
            line.Append(level);
        }

        line.Append(": ").Append(_category).Append('[').Append(eventId.Id).Append("] ").Append(message);
        if (exception is not null)
        {
            line.Append(" (").Append(exception.Message).Append(')');
        }

        if (!_queue.Writer.TryWrite(Encoding.UTF8.GetBytes(line.Append('\n').ToString())))
        {
            Interlocked.Increment(ref _dropped);
        }
    }

    private void WriteLoop()
    {
        var reader = _queue.Reader;
        while (reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
        {
            while (reader.TryRead(out var line))
            {
                try
                {
                    long dropped = Interlocked.Exchange(ref _dropped, 0);
                    if (dropped > 0)
                    {
                        _stderr.Write(Encoding.UTF8.GetBytes($"{DateTime.Now:HH:mm:ss.fff} warn: {_category}[0] {dropped} log lines dropped: stderr was not being read\n"));
                    }

                    _stderr.Write(line);
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException)
                {
                    // stderr is gone (a closed pipe, EBADF, EIO): nothing to tell, and no reason to stop serving.
                }
            }
        }
    }

    /// <summary>Writes what is queued (bounded: a stderr nobody reads cannot hold the exit for long).</summary>
    public void Flush()
    {
        _queue.Writer.TryComplete();
        _writer.Join(TimeSpan.FromSeconds(2));
    }

    public void Dispose() => Flush();
}

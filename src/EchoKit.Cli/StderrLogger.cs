using System.Text;
using Microsoft.Extensions.Logging;

namespace EchoKit.Cli;

/// <summary>
/// The server's event log: one line per event on stderr, in the layout of Microsoft.Extensions.Logging's
/// single-line SimpleConsole format (<c>17:03:56.101 info: echokit[2] connection 1 accepted from ...</c>),
/// the level coloured on a terminal. Each line is one write(2), so lines from different threads never
/// interleave. Written here rather than taken from Microsoft.Extensions.Logging.Console because that one
/// builds a dependency-injection container and options/configuration machinery at start: about a third
/// of the time to the listening line. An exception is reduced to its message: no stack traces for users.
/// </summary>
internal sealed class StderrLogger(string category, LogLevel minimum) : ILogger
{
    private readonly Stream _stderr = Console.OpenStandardError();
    private readonly bool _colors = !Console.IsErrorRedirected && Environment.GetEnvironmentVariable("NO_COLOR") is null;
    private readonly Lock _gate = new();

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None && logLevel >= minimum;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (!IsEnabled(logLevel))
        {
            return;
        }

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

        line.Append(": ").Append(category).Append('[').Append(eventId.Id).Append("] ").Append(formatter(state, exception));
        if (exception is not null)
        {
            line.Append(" (").Append(exception.Message).Append(')');
        }

        byte[] bytes = Encoding.UTF8.GetBytes(line.Append('\n').ToString());
        lock (_gate)
        {
            try
            {
                _stderr.Write(bytes);
            }
            catch (IOException)
            {
                // stderr is gone: nothing to tell, and no reason to stop serving.
            }
        }
    }
}

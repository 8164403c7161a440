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
    private volatile LogLevel _minimum;
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

    private readonly bool _json;

    /// <param name="json">--log-format json: each line one JSON object (time, level, category, event, message and
    /// the event's own fields), for log shippers; never coloured.</param>
    public StderrLogger(string category, LogLevel minimum, bool json = false)
    {
        _category = category;
        _minimum = minimum;
        _json = json;
        _colors &= !json;
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = "echokit-log" };
        _writer.Start();
    }

    public IDisposable? BeginScope<TState>(TState state)
        where TState : notnull => null;

    /// <summary>The least severe event written (a reload may change it).</summary>
    public LogLevel Minimum
    {
        get => _minimum;
        set => _minimum = value;
    }

    public bool IsEnabled(LogLevel logLevel) => logLevel != LogLevel.None && logLevel >= _minimum;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel))
        {
            Write(logLevel, eventId, formatter(state, exception), exception, state as IReadOnlyList<KeyValuePair<string, object?>>);
        }
    }

    /// <summary>A line written whatever the level (where the server listens, below --log-level Warning).</summary>
    public void WriteAnyway(LogLevel logLevel, int eventId, string message) => Write(logLevel, eventId, message, null, null);

    private static string LevelName(LogLevel logLevel) => logLevel switch
    {
        LogLevel.Trace => "trce",
        LogLevel.Debug => "dbug",
        LogLevel.Information => "info",
        LogLevel.Warning => "warn",
        LogLevel.Error => "fail",
        _ => "crit",
    };

    private void Write(LogLevel logLevel, EventId eventId, string message, Exception? exception, IReadOnlyList<KeyValuePair<string, object?>>? fields)
    {
        if (_json)
        {
            Enqueue(JsonLine(DateTime.UtcNow, logLevel, _category, eventId.Id, exception is null ? message : $"{message} ({exception.Message})", fields));
            return;
        }

        var line = new StringBuilder(128)
            .Append(DateTime.Now.ToString("HH:mm:ss.fff ", System.Globalization.CultureInfo.InvariantCulture));
        string level = LevelName(logLevel);
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

        Enqueue(Encoding.UTF8.GetBytes(line.Append('\n').ToString()));
    }

    private void Enqueue(byte[] line)
    {
        if (!_queue.Writer.TryWrite(line))
        {
            Interlocked.Increment(ref _dropped);
        }
    }

    /// <summary>
    /// One event as a JSON object and a newline: <c>time</c> (UTC, ISO 8601), <c>level</c> (the text lines' four
    /// letters), <c>category</c>, <c>event</c> (the id in brackets), <c>message</c>, then the event's fields by name
    /// in camel case (<c>id</c>, <c>peer</c>, <c>bytesIn</c>…), numbers as numbers. Control bytes a peer put in a
    /// message are escaped (\u001b), as JSON requires.
    /// </summary>
    internal static byte[] JsonLine(DateTime time, LogLevel logLevel, string category, int eventId, string message, IReadOnlyList<KeyValuePair<string, object?>>? fields)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        using (var json = new System.Text.Json.Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("time", time);
            json.WriteString("level", LevelName(logLevel));
            json.WriteString("category", category);
            json.WriteNumber("event", eventId);
            json.WriteString("message", message);
            foreach (var (name, value) in fields ?? [])
            {
                if (name.StartsWith('{') || name is "time" or "level" or "category" or "event" or "message")
                {
                    continue; // {OriginalFormat}, and nothing may shadow the fixed fields
                }

                string key = char.ToLowerInvariant(name[0]) + name[1..];
                switch (value)
                {
                    case int or long or short or byte or uint or ulong:
                        json.WriteNumber(key, Convert.ToInt64(value, System.Globalization.CultureInfo.InvariantCulture));
                        break;
                    case double or float:
                        json.WriteNumber(key, Convert.ToDouble(value, System.Globalization.CultureInfo.InvariantCulture));
                        break;
                    case bool flag:
                        json.WriteBoolean(key, flag);
                        break;
                    case null:
                        json.WriteNull(key);
                        break;
                    default:
                        json.WriteString(key, Convert.ToString(value, System.Globalization.CultureInfo.InvariantCulture));
                        break;
                }
            }

            json.WriteEndObject();
        }

        System.Buffers.BuffersExtensions.Write(buffer, "\n"u8);
        return buffer.WrittenSpan.ToArray();
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
                        string note = $"{dropped} log lines dropped: stderr was not being read";
                        _stderr.Write(_json
                            ? JsonLine(DateTime.UtcNow, LogLevel.Warning, _category, 0, note, [new("dropped", dropped)])
                            : Encoding.UTF8.GetBytes($"{DateTime.Now:HH:mm:ss.fff} warn: {_category}[0] {note}\n"));
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

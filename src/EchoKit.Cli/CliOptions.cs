using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;

namespace EchoKit.Cli;

/// <summary>Option and argument factories shared by the commands, each with its own validation message.</summary>
internal static class CliOptions
{
    /// <summary>
    /// A duration option (500ms, 2s, 5m, 1h, plain seconds). Read it with <see cref="DurationOption.Get"/>;
    /// the help shows the default as a user would type it, not as a TimeSpan.
    /// </summary>
    public static DurationOption Duration(string name, string description, string? defaultText, bool allowZero = true)
    {
        var option = new Option<TimeSpan?>(name)
        {
            Description = defaultText is null ? description : $"{description} [default: {defaultText}]",
            HelpName = "duration",
            CustomParser = result => ParseDuration(result, name, allowZero),
        };
        TimeSpan? fallback = defaultText is not null && Durations.TryParse(defaultText, out var value, out _) ? value : null;
        if (defaultText is not null)
        {
            DurationDefaults.AddOrUpdate(option, defaultText);
        }

        return new DurationOption(option, fallback);
    }

    private static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Option, string> DurationDefaults = [];

    /// <summary>A duration option's default as a user writes it (its option has none of its own: null means "not given").</summary>
    public static string? DurationDefault(Option option) => DurationDefaults.TryGetValue(option, out string? text) ? text : null;

    private static TimeSpan? ParseDuration(ArgumentResult result, string name, bool allowZero)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
        if (!Durations.TryParse(text, out var value, out string error))
        {
            result.AddError($"invalid {name} value: {error}");
            return TimeSpan.Zero;
        }

        if (!allowZero && value == TimeSpan.Zero)
        {
            result.AddError($"invalid {name} value: '{text}' must be greater than zero");
        }

        return value;
    }

    /// <summary>An integer option with an inclusive range and a message that says it.</summary>
    public static Option<int> Integer(string name, string description, int defaultValue, int min, int max, string? alias = null)
    {
        var option = alias is null ? new Option<int>(name) : new Option<int>(name, alias);
        option.Description = description;
        option.DefaultValueFactory = _ => defaultValue;
        option.CustomParser = result => ParseInteger(result, name, min, max);
        return option;
    }

    public static int ParseInteger(ArgumentResult result, string name, int min, int max)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
        if (!long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out long value))
        {
            result.AddError($"invalid {name} value '{text}': not a whole number (expected {min} to {max})");
            return 0;
        }

        if (value < min || value > max)
        {
            result.AddError($"invalid {name} value '{text}': out of range (expected {min} to {max})");
            return 0;
        }

        return (int)value;
    }

    /// <summary>A size in bytes: a whole number, or with a binary suffix as nginx takes them (64k, 4m, 1g; KiB, MiB, GiB).</summary>
    public static Option<int?> Bytes(string name, string description, int min, int max) => new(name)
    {
        Description = description,
        HelpName = "bytes",
        CustomParser = result => ParseBytes(result, name, min, max),
    };

    public static int? ParseBytes(ArgumentResult result, string name, int min, int max)
    {
        string text = result.Tokens.Count > 0 ? result.Tokens[0].Value : "";
        string digits = text.TrimEnd('b', 'B', 'i');
        long unit = digits.Length == 0 ? 1 : char.ToLowerInvariant(digits[^1]) switch
        {
            'k' => 1L << 10,
            'm' => 1L << 20,
            'g' => 1L << 30,
            _ => 1,
        };
        if (unit > 1)
        {
            digits = digits[..^1];
        }
        else
        {
            digits = text; // no unit: only digits are a size ("12b" is not)
        }

        if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long value) || value > long.MaxValue / unit)
        {
            result.AddError($"invalid {name} value '{text}': not a size in bytes (a whole number, or with k, m or g: 256k, 4m)");
            return null;
        }

        value *= unit;
        if (value < min || value > max)
        {
            result.AddError($"invalid {name} value '{text}': out of range (expected {min} to {max} bytes)");
            return null;
        }

        return (int)value;
    }

    /// <summary>--engine for serve and bench; asking for epoll where it cannot run is a usage error.</summary>
    public static Option<EchoEngine> Engine(string description)
    {
        var option = new Option<EchoEngine>("--engine") { Description = description, DefaultValueFactory = _ => EchoEngine.Auto };
        option.Validators.Add(r =>
        {
            // Read the token, not the value: a value that does not parse is reported by the parser itself.
            if (r.Tokens.Count > 0 && Enum.TryParse(r.Tokens[0].Value, ignoreCase: true, out EchoEngine asked)
                && asked == EchoEngine.Epoll && !EchoServer.EpollSupported)
            {
                r.AddError("--engine epoll runs on Linux x86-64 only; use --engine socket");
            }
        });
        return option;
    }

    /// <summary>-4 / -6: restrict to one address family.</summary>
    public static (Option<bool> Four, Option<bool> Six) FamilyOptions() =>
        (new Option<bool>("--ipv4", "-4") { Description = "IPv4 only" }, new Option<bool>("--ipv6", "-6") { Description = "IPv6 only" });

    /// <summary>The family -4/-6 ask for (null: both), or an error when both are given.</summary>
    public static bool TryGetFamily(ParseResult result, (Option<bool> Four, Option<bool> Six) flags, out System.Net.Sockets.AddressFamily? family, out string? error)
    {
        bool four = result.GetValue(flags.Four), six = result.GetValue(flags.Six);
        family = four ? System.Net.Sockets.AddressFamily.InterNetwork : six ? System.Net.Sockets.AddressFamily.InterNetworkV6 : null;
        error = four && six ? "-4 and -6 cannot be combined" : null;
        return error is null;
    }

    /// <summary>Linux's sun_path holds 108 bytes with the terminating NUL.</summary>
    public const int MaxUnixPathBytes = 107;

    /// <summary>Why a --unix path cannot be a socket address (empty, too long), or null.</summary>
    public static string? CheckUnixPath(string? path)
    {
        if (path is null)
        {
            return null;
        }

        int bytes = System.Text.Encoding.UTF8.GetByteCount(path);
        return bytes == 0 ? "invalid --unix value: empty path"
            : bytes > MaxUnixPathBytes ? $"invalid --unix value: the path is {bytes} bytes, and a Unix socket path holds at most {MaxUnixPathBytes}: choose a shorter (or relative) path"
            : null;
    }

    /// <summary>Port numbers: 0 lets the OS pick (for serve); 1-65535 otherwise.</summary>
    public static bool TryParsePort(string text, int min, out int port) =>
        int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out port) && port >= min && port <= 65535;
}

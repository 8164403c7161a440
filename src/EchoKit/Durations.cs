using System.Globalization;

namespace EchoKit;

/// <summary>Durations as users type them: <c>50us</c>, <c>500ms</c>, <c>2s</c>, <c>5m</c>, <c>1h</c>, or plain (fractional) seconds.</summary>
internal static class Durations
{
    // No inner white space ("10 s"), no thousands separators, no currency: a number and a unit.
    private const NumberStyles Strict = NumberStyles.AllowLeadingSign | NumberStyles.AllowDecimalPoint | NumberStyles.AllowExponent;

    private static readonly (string Suffix, double Milliseconds)[] Units =
    [
        ("us", 0.001), ("µs", 0.001), ("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000),
    ];

    /// <summary>Parses a duration; on failure <paramref name="error"/> says why in words.</summary>
    public static bool TryParse(string? text, out TimeSpan value, out string error)
    {
        value = TimeSpan.Zero;
        error = "";
        text = text?.Trim() ?? "";
        if (text.Length == 0)
        {
            error = "empty duration; use e.g. 500ms, 2s, 5m, 1h or plain seconds";
            return false;
        }

        double scale = 1000;
        string number = text;
        foreach (var (suffix, ms) in Units)
        {
            if (text.EndsWith(suffix, StringComparison.OrdinalIgnoreCase) && double.TryParse(text[..^suffix.Length],
                    Strict, CultureInfo.InvariantCulture, out _))
            {
                scale = ms;
                number = text[..^suffix.Length];
                break;
            }
        }

        if (!double.TryParse(number, Strict, CultureInfo.InvariantCulture, out double amount)
            || double.IsNaN(amount) || double.IsInfinity(amount))
        {
            error = $"'{text}' is not a duration; use e.g. 500ms, 2s, 5m, 1h or plain seconds";
            return false;
        }

        if (amount < 0)
        {
            error = $"'{text}' is negative";
            return false;
        }

        double totalMs = amount * scale;
        if (totalMs > int.MaxValue)
        {
            error = $"'{text}' is too long (at most {int.MaxValue / 3_600_000} hours)";
            return false;
        }

        value = TimeSpan.FromMilliseconds(totalMs);
        return true;
    }

    /// <summary>The shortest exact form: 50us, 500ms, 2s, 1.5s, 5m, 1h.</summary>
    public static string Format(TimeSpan value)
    {
        if (value == Timeout.InfiniteTimeSpan)
        {
            return "never";
        }

        double ms = value.TotalMilliseconds;
        if (ms != 0 && ms % 3_600_000 == 0)
        {
            return $"{ms / 3_600_000}h";
        }

        if (ms != 0 && ms % 60_000 == 0)
        {
            return $"{ms / 60_000}m";
        }

        if (ms != 0 && ms < 1)
        {
            return (ms * 1000).ToString("0.###", CultureInfo.InvariantCulture) + "us";
        }

        return ms % 1000 == 0 || ms >= 1000
            ? (ms / 1000).ToString("0.###", CultureInfo.InvariantCulture) + "s"
            : ms.ToString("0.###", CultureInfo.InvariantCulture) + "ms";
    }
}

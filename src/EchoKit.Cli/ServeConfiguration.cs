using System.Collections;
using System.CommandLine;
using System.Globalization;
using System.Text;

namespace EchoKit.Cli;

/// <summary>
/// Where <c>echokit serve</c>'s settings come from, lowest first: the defaults, the <c>--config FILE</c>
/// (<c>key = value</c> lines, a key for every flag), the environment (<c>ECHOKIT_MAX_CONNECTIONS</c> for
/// <c>--max-connections</c>), the command line. The file and the environment are turned into the flags they
/// stand for and parsed with the command line, so a value means the same wherever it is written; each is first
/// checked alone, so a bad one is reported where it was written (file, line, column, key). A flag given at a
/// higher level replaces the lower level's value, lists included. SIGHUP reads it all again (<see cref="Layer"/>).
/// </summary>
internal sealed class ServeConfiguration(string[] args)
{
    public const string EnvironmentPrefix = "ECHOKIT_";

    /// <summary>Set once the commands exist.</summary>
    public RootCommand? Root { get; set; }

    /// <summary>The command line alone, as parsed before the file and the environment are put under it.</summary>
    public ParseResult? CommandLine { get; set; }

    /// <summary>The settings the server runs with (set at start, replaced by each reload).</summary>
    public IReadOnlyList<Setting>? InForce { get; set; }

    /// <summary>--config and --print-config: about the configuration, not part of it.</summary>
    public Option<string?> ConfigOption { get; } = new("--config") { Description = "Read settings from this file: 'key = value' lines, a key for every flag (max-connections = 100); the environment (ECHOKIT_MAX_CONNECTIONS) and flags override it", HelpName = "file" };

    public Option<bool> PrintOption { get; } = new("--print-config") { Description = "Print the effective settings and where each came from (default, file:line, environment, flag), then exit" };

    /// <summary>One setting in force: its values as written and where they came from.</summary>
    public sealed record Setting(Option Option, string Key, IReadOnlyList<string> Values, string Source)
    {
        /// <summary>Where each value came from, when they came from different lines of a file.</summary>
        public IReadOnlyList<string>? ValueSources { get; init; }
    }

    /// <summary>The layered parse: the settings in force (every serve option, in order) and the result to run with.</summary>
    public sealed record Layered(ParseResult Result, IReadOnlyList<Setting> Settings)
    {
        /// <summary>ECHOKIT_* variables that name no setting (a typo, most likely): worth a warning, not an error.</summary>
        public IReadOnlyList<string> Unknown { get; init; } = [];
    }

    /// <summary>
    /// Reads the file and the environment (again, at a reload) and parses them under <paramref name="parsed"/>, the
    /// serve command line alone: the result to run with, or the one line that says what is wrong.
    /// </summary>
    public (Layered? Layered, string? Error) Layer(ParseResult parsed)
    {
        var serve = parsed.CommandResult.Command;
        var settings = new List<Setting>();
        var fromFile = new Dictionary<Option, (List<string> Values, List<string> Sources)>();
        if (parsed.GetValue(ConfigOption) is { } path)
        {
            if (ReadFile(path, serve, fromFile) is { } fileError)
            {
                return (null, fileError);
            }
        }

        var byVariable = Keyed(serve).ToDictionary(k => VariableOf(k.Key), k => k.Option, StringComparer.Ordinal);
        var fromEnvironment = new Dictionary<Option, (List<string> Values, string Source)>();
        var unknown = new List<string>();
        foreach (DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            if (entry.Key is not string name || !name.StartsWith(EnvironmentPrefix, StringComparison.Ordinal) || entry.Value is not string text)
            {
                continue;
            }

            if (!byVariable.TryGetValue(name, out var option))
            {
                unknown.Add(CommandLineHabits.Nearest(byVariable.Keys, name) is { } nearest
                    ? $"{Printable(name)} is not a setting (did you mean {nearest}?); ignored"
                    : $"{Printable(name)} is not a setting of serve; ignored");
                continue;
            }

            var values = option.ValueType.IsArray
                ? text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToList()
                : [text.Trim()];
            foreach (string value in values)
            {
                if (Check(option, value) is { } why)
                {
                    return (null, $"{name}={Printable(text)}: {why}");
                }
            }

            fromEnvironment[option] = (values, name);
        }

        var tokens = new List<string>();
        foreach (var (key, option) in Keyed(serve))
        {
            if (parsed.GetResult(option) is { Implicit: false } given)
            {
                string flag = given.IdentifierToken?.Value ?? option.Name;
                settings.Add(new Setting(option, key, given.Tokens.Select(t => t.Value).DefaultIfEmpty("true").ToList(), $"command line ({flag})"));
                continue;
            }

            Setting? chosen = fromEnvironment.TryGetValue(option, out var env) ? new Setting(option, key, env.Values, env.Source)
                : fromFile.TryGetValue(option, out var file) ? new Setting(option, key, file.Values, file.Sources[0]) { ValueSources = file.Sources }
                : null;
            settings.Add(chosen ?? new Setting(option, key, DefaultOf(option), "default"));
            if (chosen is null)
            {
                continue;
            }

            foreach (string one in chosen.Values)
            {
                if (option.ValueType == typeof(bool))
                {
                    if (ParseBool(one) == true)
                    {
                        tokens.Add(option.Name);
                    }
                }
                else
                {
                    tokens.Add($"{option.Name}={one}");
                }
            }
        }

        if (tokens.Count == 0)
        {
            return (new Layered(parsed, settings) { Unknown = unknown }, null);
        }

        var layered = Root!.Parse([.. args.Take(1), .. tokens, .. args.Skip(1)]);
        if (layered.Errors.Count > 0)
        {
            return (null, $"the settings from {Sources(settings)} do not go together: {layered.Errors[0].Message.TrimEnd('.')}");
        }

        return (new Layered(layered, settings) { Unknown = unknown }, null);
    }

    /// <summary>What <c>--print-config</c> writes: a file <c>--config</c> reads back, each line saying where its value came from.</summary>
    public static string Print(IReadOnlyList<Setting> settings)
    {
        var text = new StringBuilder();
        text.Append("# echokit serve: the settings in force, and where each came from\n");
        text.Append("# (lowest first: default, --config file, ECHOKIT_* environment, command line)\n");
        foreach (var setting in settings)
        {
            if (setting.Values.Count == 0)
            {
                string? fallback = DescribedDefault(setting.Option);
                text.Append(CultureInfo.InvariantCulture, $"# {setting.Key}: not set{(fallback is null ? "" : $" (default: {fallback})")}\n");
                continue;
            }

            for (int i = 0; i < setting.Values.Count; i++)
            {
                string line = $"{setting.Key} = {Quoted(setting.Values[i])}";
                text.Append(line.PadRight(40)).Append(" # ").Append(setting.ValueSources?[i] ?? setting.Source).Append('\n');
            }
        }

        return text.ToString();
    }

    /// <summary>The settings that differ between two layerings, by key: (key, before, after).</summary>
    public static IEnumerable<(string Key, string Before, string After)> Changes(IReadOnlyList<Setting> before, IReadOnlyList<Setting> after)
    {
        var old = before.ToDictionary(s => s.Key, StringComparer.Ordinal);
        foreach (var setting in after)
        {
            string was = old.TryGetValue(setting.Key, out var previous) ? Shown(previous) : "(not set)";
            string now = Shown(setting);
            if (was != now)
            {
                yield return (setting.Key, was, now);
            }
        }

        static string Shown(Setting s) => s.Values.Count == 0 ? "(not set)" : string.Join(", ", s.Values);
    }

    /// <summary>Every serve option that is a setting, with its key: the long name without dashes.</summary>
    private IEnumerable<(string Key, Option Option)> Keyed(Command serve) =>
        serve.Options
            .Where(o => o != ConfigOption && o != PrintOption && o.Name.StartsWith("--", StringComparison.Ordinal) && o is not System.CommandLine.Help.HelpOption && o.Name != "--version")
            .Select(o => (o.Name[2..], o));

    public static string VariableOf(string key) => EnvironmentPrefix + key.ToUpperInvariant().Replace('-', '_');

    private string? ReadFile(string path, Command serve, Dictionary<Option, (List<string> Values, List<string> Sources)> found)
    {
        string[] lines;
        try
        {
            lines = Internal.TextFile.ReadLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return $"--config {path}: cannot read it: {Internal.FileErrorText.Describe(e)}";
        }

        var keyed = Keyed(serve).ToDictionary(k => k.Key, k => k.Option, StringComparer.Ordinal);
        for (int number = 1; number <= lines.Length; number++)
        {
            string line = lines[number - 1];
            string trimmed = line.TrimStart();
            if (trimmed.Length == 0 || trimmed[0] is '#' or ';')
            {
                continue;
            }

            int keyColumn = line.Length - trimmed.Length + 1;
            string Where(int column) => $"{path}:{number}:{column}";
            int equals = line.IndexOf('=', StringComparison.Ordinal);
            if (equals < 0)
            {
                return $"{Where(keyColumn)}: expected 'key = value', found '{Printable(trimmed)}'";
            }

            string key = line[..equals].Trim();
            if (key.StartsWith("--", StringComparison.Ordinal))
            {
                return $"{Where(keyColumn)}: write the key without dashes: '{key[2..]} = …'";
            }

            if (key == ConfigOption.Name[2..] || key == PrintOption.Name[2..])
            {
                return $"{Where(keyColumn)}: {key}: not a setting a file can hold (give it on the command line)";
            }

            if (!keyed.TryGetValue(key, out var option))
            {
                string hint = CommandLineHabits.Nearest(keyed.Keys, key) is { } nearest ? $"; did you mean '{nearest}'?" : "";
                return $"{Where(keyColumn)}: unknown key '{Printable(key)}'{hint} (the keys are serve's flags without the dashes: see 'echokit serve --help')";
            }

            int valueColumn = equals + 2;
            while (valueColumn <= line.Length && char.IsWhiteSpace(line[valueColumn - 1]))
            {
                valueColumn++;
            }

            if (ValueOf(line, valueColumn - 1, out string value) is { } syntax)
            {
                return $"{Where(valueColumn)}: {key}: {syntax}";
            }

            if (Check(option, value) is { } why)
            {
                return $"{Where(valueColumn)}: {key}: {why}";
            }

            if (found.TryGetValue(option, out var earlier))
            {
                if (!option.ValueType.IsArray)
                {
                    return $"{Where(keyColumn)}: {key} is given twice (first on {earlier.Sources[0]}); it takes one value";
                }

                earlier.Values.Add(value);
                earlier.Sources.Add($"{path}:{number}");
            }
            else
            {
                found[option] = ([value], [$"{path}:{number}"]);
            }
        }

        return null;
    }

    /// <summary>
    /// The value after '=': as written up to a comment (" #") or the end, or a "quoted string" (\" and \\ escaped)
    /// for one with spaces at its ends or a '#'. A syntax error, or null.
    /// </summary>
    private static string? ValueOf(string line, int start, out string value)
    {
        value = "";
        if (start >= line.Length)
        {
            return "no value after '=' (leave the line out for the default)";
        }

        if (line[start] != '"')
        {
            int comment = line.IndexOf(" #", start, StringComparison.Ordinal);
            int tabComment = line.IndexOf("\t#", start, StringComparison.Ordinal);
            if (tabComment >= 0 && (comment < 0 || tabComment < comment))
            {
                comment = tabComment;
            }

            value = (comment < 0 ? line[start..] : line[start..comment]).TrimEnd();
            return value.Length == 0 ? "no value after '=' (leave the line out for the default)" : null;
        }

        var text = new StringBuilder();
        for (int i = start + 1; i < line.Length; i++)
        {
            char c = line[i];
            if (c == '\\' && i + 1 < line.Length && line[i + 1] is '"' or '\\')
            {
                text.Append(line[++i]);
            }
            else if (c == '"')
            {
                string rest = line[(i + 1)..].Trim();
                if (rest.Length > 0 && rest[0] != '#')
                {
                    return $"unexpected '{Printable(rest)}' after the closing quote";
                }

                value = text.ToString();
                return null;
            }
            else
            {
                text.Append(c);
            }
        }

        return "the quoted value has no closing '\"'";
    }

    /// <summary>Why a value is not one the option takes (as the command line would say it), or null.</summary>
    private string? Check(Option option, string value)
    {
        if (value.Length == 0)
        {
            return "empty value";
        }

        if (option.ValueType == typeof(bool))
        {
            return ParseBool(value) is null ? $"invalid value '{Printable(value)}': expected true or false" : null;
        }

        if (value.Any(char.IsControl))
        {
            return $"invalid value '{Printable(value)}': control characters";
        }

        if ((Nullable.GetUnderlyingType(option.ValueType) ?? option.ValueType) is { IsEnum: true } kind
            && !(Enum.TryParse(kind, value, ignoreCase: true, out _) && !value.Any(char.IsDigit)))
        {
            return $"invalid value '{Printable(value)}': expected one of {string.Join(", ", Enum.GetNames(kind).Select(n => n.ToLowerInvariant()))}";
        }

        var alone = Root!.Parse(["serve", $"{option.Name}={value}"]);
        return alone.Errors.Count == 0 ? null : alone.Errors[0].Message.Split('\n')[0].TrimEnd('.');
    }

    private static bool? ParseBool(string text) => text.ToLowerInvariant() switch
    {
        "true" or "yes" or "on" or "1" => true,
        "false" or "no" or "off" or "0" => false,
        _ => null,
    };

    /// <summary>The default's values as a file would write them (none: no default).</summary>
    private static List<string> DefaultOf(Option option)
    {
        if (CliOptions.DurationDefault(option) is { } duration)
        {
            return [duration];
        }

        if (!option.HasDefaultValue || option.GetDefaultValue() is not { } value)
        {
            return option.ValueType == typeof(bool) ? ["false"] : [];
        }

        return value switch
        {
            bool b => [b ? "true" : "false"],
            string s => [s],
            TimeSpan t => [Durations.Format(t)],
            Enum e => [e.ToString().ToLowerInvariant()],
            IFormattable f => [f.ToString(null, CultureInfo.InvariantCulture)],
            _ => [value.ToString() ?? ""],
        };
    }

    /// <summary>"4m" from a description's "[default: 4m]", for an option whose default is not a value of its own.</summary>
    private static string? DescribedDefault(Option option)
    {
        string description = option.Description ?? "";
        int at = description.LastIndexOf("[default: ", StringComparison.Ordinal);
        return at < 0 ? null : description[(at + 10)..].TrimEnd(']');
    }

    private static string Quoted(string value) =>
        value.Length == 0 || value[0] == '"' || value.Trim().Length != value.Length || value.Contains('#', StringComparison.Ordinal)
            ? "\"" + value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal) + "\""
            : value;

    private static string Sources(IReadOnlyList<Setting> settings) =>
        string.Join(", ", settings.Select(s => s.Source).Where(s => s != "default").Select(s => s.Split(':')[0]).Distinct());

    /// <summary>Text from a file or the environment, shown safely on a terminal.</summary>
    private static string Printable(string text)
    {
        var shown = new StringBuilder();
        foreach (char c in text.Length > 80 ? text[..80] + "…" : text)
        {
            shown.Append(char.IsControl(c) ? $"\\x{(int)c:x2}" : c.ToString());
        }

        return shown.ToString();
    }
}

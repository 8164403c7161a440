using System.CommandLine;
using System.Globalization;

namespace EchoKit.Cli;

/// <summary>
/// What System.CommandLine gets wrong for people with netcat habits: an unknown option in front of an
/// argument is taken for the argument (<c>connect -v 127.0.0.1</c> said "invalid port '127.0.0.1'", <c>connect -l
/// 9999</c> tried to resolve "-l", <c>bench --frob HOST</c> blamed HOST), and a mistyped command is "Required
/// command was not provided". Checked before parsing: an unknown option is named as such (with what to use
/// instead for nc's own flags), an unknown command gets the nearest one.
/// </summary>
internal static class CommandLineHabits
{
    /// <summary>nc's flags that people type out of habit, and what EchoKit does instead.</summary>
    private static readonly Dictionary<string, string> Netcat = new(StringComparer.Ordinal)
    {
        ["-l"] = "nc's listen mode is 'echokit serve --port N'",
        ["-k"] = "'echokit serve' keeps listening for every client",
        ["-v"] = "echokit always reports connecting and closing on stderr",
        ["-w"] = "use --connect-timeout, --wait or --recv-timeout",
        ["-z"] = "to check a port, use 'echokit connect HOST PORT --send \"\" --wait 100ms'",
        ["-n"] = "addresses are used as given; names are resolved",
    };

    /// <summary>The usage line for the first such mistake, or null to let the parser go on.</summary>
    public static string? Check(RootCommand root, string[] args)
    {
        if (args.Length == 0 || args[0].StartsWith('-'))
        {
            return null; // --help, --version, or nothing: the parser's own answers
        }

        var command = root.Subcommands.FirstOrDefault(c => c.Name == args[0] || c.Aliases.Contains(args[0]));
        if (command is null)
        {
            string nearest = root.Subcommands.MinBy(c => Distance(c.Name, args[0]))!.Name;
            string hint = Distance(nearest, args[0]) <= 2 || nearest.StartsWith(args[0], StringComparison.Ordinal) ? $"; did you mean '{nearest}'?" : "";
            return $"unknown command '{args[0]}'{hint} (commands: {string.Join(", ", root.Subcommands.Select(c => c.Name))}); see 'echokit --help'";
        }

        var options = command.Options.Concat(root.Options).ToList();
        for (int i = 1; i < args.Length; i++)
        {
            string token = args[i];
            if (token == "--")
            {
                return null; // what follows are arguments
            }

            if (token.Length < 2 || token[0] != '-' || double.TryParse(token, NumberStyles.Float, CultureInfo.InvariantCulture, out _))
            {
                continue; // an argument, or a (negative) number the parser will judge
            }

            string name = token.Split('=', 2)[0];
            var option = options.FirstOrDefault(o => o.Name == name || o.Aliases.Contains(name));
            if (option is null)
            {
                if (token.Length > 2 && token[1] != '-' && token[1..].All(c => options.Any(o => o.Aliases.Contains("-" + c) || o.Name == "-" + c)))
                {
                    continue; // bundled short flags (-4N): the parser splits them
                }

                string instead = Netcat.TryGetValue(name, out string? habit) ? $" ({habit})" : "";
                return $"unknown option '{name}' for 'echokit {command.Name}'{instead}; see 'echokit {command.Name} --help'";
            }

            if (!token.Contains('=', StringComparison.Ordinal) && option.Arity.MaximumNumberOfValues > 0 && option.ValueType != typeof(bool))
            {
                i++; // its value, whatever it looks like
            }
        }

        return null;
    }

    /// <summary>The candidate nearest to <paramref name="typed"/>, if it is within two edits (a typo); else null. For "did you mean".</summary>
    internal static string? Nearest(IEnumerable<string> candidates, string typed) =>
        candidates.MinBy(c => Distance(c, typed)) is { } nearest && Distance(nearest, typed) <= 2 ? nearest : null;

    /// <summary>Levenshtein distance, for "did you mean".</summary>
    private static int Distance(string a, string b)
    {
        var row = Enumerable.Range(0, b.Length + 1).ToArray();
        for (int i = 1; i <= a.Length; i++)
        {
            int diagonal = row[0];
            row[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                int above = row[j];
                row[j] = Math.Min(Math.Min(row[j] + 1, row[j - 1] + 1), diagonal + (a[i - 1] == b[j - 1] ? 0 : 1));
                diagonal = above;
            }
        }

        return row[b.Length];
    }
}

using System.CommandLine;
using Microsoft.Extensions.Logging;

namespace EchoKit.Cli;

/// <summary>
/// SIGHUP: the configuration is read again (the --config file and the environment, under the same command line)
/// and what can change without dropping a connection is applied: the limits, the timeouts, the access rules
/// (files re-read), the UDP rate, the log level. A changed setting that needs a restart (the port, the engine …) is
/// named in the log and kept, and stays "in force" as it was, so the next reload names it again. A configuration
/// that does not read, or an allow file that does not parse, changes nothing: the log says why.
/// </summary>
internal sealed class ServeReload(ServeConfiguration configuration, Func<ParseResult, (EchoServerOptions? Options, LogLevel Level, string? Error)> reloadable)
{
    /// <summary>The settings a reload applies; every other one needs a restart.</summary>
    private static readonly HashSet<string> Reloadable = new(StringComparer.Ordinal)
    {
        "max-connections", "idle-timeout", "send-timeout", "shutdown-timeout", "udp-rate",
        "allow", "deny", "allow-file", "deny-file", "max-per-address", "allow-uid", "allow-gid", "log-level",
    };

    private readonly Lock _gate = new();

    public void Run(EchoServer server, StderrLogger logger)
    {
        lock (_gate)
        {
            var inForce = configuration.InForce!;
            var (layered, error) = configuration.Layer(configuration.CommandLine!);
            if (error is not null)
            {
                logger.LogError("SIGHUP: configuration not reloaded, the settings in force stay: {Error}", error);
                return;
            }

            var (next, level, reloadError) = reloadable(layered!.Result);
            if (reloadError is not null)
            {
                logger.LogError("SIGHUP: configuration not reloaded, the settings in force stay: {Error}", reloadError);
                return;
            }

            var changes = ServeConfiguration.Changes(inForce, layered.Settings).ToList();
            var kept = changes.Where(c => !Reloadable.Contains(c.Key)).ToList();
            foreach (var (key, before, after) in kept)
            {
                logger.LogWarning("SIGHUP: {Key} changed ({Before} -> {After}) but needs a restart: the old value stays", key, before, after);
            }

            server.Reconfigure(next!);
            logger.Minimum = level;

            // In force now: the new values of what applied, the old ones of what did not.
            var keptKeys = kept.Select(c => c.Key).ToHashSet(StringComparer.Ordinal);
            var old = inForce.ToDictionary(s => s.Key, StringComparer.Ordinal);
            configuration.InForce = layered.Settings.Select(s => keptKeys.Contains(s.Key) ? old[s.Key] : s).ToList();

            var applied = changes.Where(c => Reloadable.Contains(c.Key)).Select(c => $"{c.Key} {c.Before} -> {c.After}").ToList();
            var reread = layered.Settings.Where(s => s.Key is "allow-file" or "deny-file" && s.Values.Count > 0).SelectMany(s => s.Values).ToList();
            string files = reread.Count == 0 ? "" : $" ({string.Join(", ", reread)} read again)";
            logger.LogInformation(
                "SIGHUP: configuration reloaded{Files}: {Changes}",
                files,
                applied.Count == 0 ? "no setting changed" : string.Join("; ", applied));
        }
    }
}

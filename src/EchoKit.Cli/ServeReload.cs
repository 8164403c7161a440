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
internal sealed class ServeReload(ServeConfiguration configuration, Func<ParseResult, ServeReload.Reloaded> reloadable)
{
    /// <summary>What a reload may apply, read from the configuration read again; or why it cannot be.</summary>
    public sealed record Reloaded(EchoServerOptions? Options, LogLevel Level, Internal.Tls.TlsSettings? Tls, string? Error);

    /// <summary>The settings a reload applies; every other one needs a restart.</summary>
    private static readonly HashSet<string> Reloadable = new(StringComparer.Ordinal)
    {
        "max-connections", "idle-timeout", "send-timeout", "shutdown-timeout", "udp-rate",
        "allow", "deny", "allow-file", "deny-file", "max-per-address", "allow-uid", "allow-gid", "log-level",
    };

    /// <summary>Reloadable while the server serves TLS from files (the certificate is loaded again from them in any case).</summary>
    private static readonly HashSet<string> TlsFiles = new(StringComparer.Ordinal) { "tls-cert", "tls-key", "tls-password-file", "tls-client-ca" };

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

            var next = reloadable(layered!.Result);
            if (next.Error is not null)
            {
                logger.LogError("SIGHUP: configuration not reloaded, the settings in force stay: {Error}", next.Error);
                return;
            }

            // The certificate first: the one part that may still fail (a key that is not the certificate's …).
            bool tlsFromFiles = server.TlsCertificate is not null && next.Tls is { Certificate.IsSelfSigned: false };
            bool tlsApplied = false;
            if (server.TlsCertificate is not null)
            {
                try
                {
                    server.ReloadTls(tlsFromFiles ? next.Tls : null);
                    tlsApplied = tlsFromFiles;
                    logger.LogInformation("SIGHUP: TLS certificate reloaded for new handshakes: {Certificate}", ServeCommand.Describe(server.TlsCertificate!));
                }
                catch (Internal.Tls.TlsConfigurationException e)
                {
                    logger.LogError("SIGHUP: TLS certificate not reloaded, the old one stays: {Error}", e.Message);
                }
            }

            bool Applies(string key) => Reloadable.Contains(key) || (tlsApplied && TlsFiles.Contains(key));
            var changes = ServeConfiguration.Changes(inForce, layered.Settings).ToList();
            var kept = changes.Where(c => !Applies(c.Key)).ToList();
            foreach (var (key, before, after) in kept)
            {
                logger.LogWarning("SIGHUP: {Key} changed ({Before} -> {After}) but needs a restart: the old value stays", key, before, after);
            }

            server.Reconfigure(next.Options!);
            logger.Minimum = next.Level;

            // In force now: the new values of what applied, the old ones of what did not.
            var keptKeys = kept.Select(c => c.Key).ToHashSet(StringComparer.Ordinal);
            var old = inForce.ToDictionary(s => s.Key, StringComparer.Ordinal);
            configuration.InForce = layered.Settings.Select(s => keptKeys.Contains(s.Key) ? old[s.Key] : s).ToList();

            var applied = changes.Where(c => Applies(c.Key)).Select(c => $"{c.Key} {c.Before} -> {c.After}").ToList();
            var reread = layered.Settings.Where(s => s.Key is "allow-file" or "deny-file" && s.Values.Count > 0).SelectMany(s => s.Values).ToList();
            string files = reread.Count == 0 ? "" : $" ({string.Join(", ", reread)} read again)";
            logger.LogInformation(
                "SIGHUP: configuration reloaded{Files}: {Changes}",
                files,
                applied.Count == 0 ? "no setting changed" : string.Join("; ", applied));
        }
    }
}

using System.CommandLine;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using EchoKit.Internal.Tls;
using Microsoft.Extensions.Logging;

namespace EchoKit.Cli;

/// <summary><c>echokit serve</c>: the multi-client TCP echo server.</summary>
internal static class ServeCommand
{
    public static Command Create(ServeConfiguration configuration)
    {
        var port = new Option<int>("--port", "-p")
        {
            Description = "TCP port to listen on (0: let the OS choose; the log line says which)",
            DefaultValueFactory = _ => 8888,
            CustomParser = r => CliOptions.ParseInteger(r, "--port", 0, 65535),
        };
        var bind = new Option<string?>("--bind", "-b")
        {
            Description = "Address or host name to listen on [default: all interfaces, IPv4 and IPv6 (dual-stack)]",
            HelpName = "address",
        };
        var unix = new Option<string?>("--unix")
        {
            Description = "Listen on this Unix domain socket file instead of TCP; with --udp, a datagram socket (a stale file is replaced, removed at exit)",
            HelpName = "path",
        };
        var unixMode = new Option<UnixFileMode?>("--unix-mode")
        {
            Description = "Permissions of the --unix socket file, in octal (e.g. 660) [default: from the umask]",
            HelpName = "octal",
            CustomParser = r =>
            {
                string text = r.Tokens[0].Value;
                try
                {
                    int value = Convert.ToInt32(text, 8);
                    if (value is >= 0 and <= 0x1FF)
                    {
                        return (UnixFileMode)value;
                    }
                }
                catch (Exception e) when (e is FormatException or ArgumentException or OverflowException)
                {
                    // Reported below.
                }

                r.AddError($"invalid --unix-mode value '{text}': expected octal permissions such as 660 or 0600");
                return null;
            },
        };
        var family = CliOptions.FamilyOptions();
        var tcp = new Option<bool>("--tcp") { Description = "Serve TCP echo (the default; give it with --udp to serve both)" };
        var udp = new Option<bool>("--udp") { Description = "Serve UDP echo (RFC 862) on the same port" };
        var udpRate = CliOptions.Integer("--udp-rate", "UDP datagrams per second answered per source address (0: unlimited)", 1000, 0, 100_000_000);
        var maxDatagram = new Option<int?>("--max-datagram")
        {
            Description = "Largest datagram echoed, in bytes; larger ones are dropped and counted [default: the most the transport carries]",
            HelpName = "bytes",
            CustomParser = r => CliOptions.ParseInteger(r, "--max-datagram", 1, 16 * 1024 * 1024),
        };
        var udpReceiveBuffer = CliOptions.Bytes("--udp-rcvbuf", "Receive buffer of each datagram socket (SO_RCVBUF): room for bursts; past net.core.rmem_max only as root [default: 4m]", 4096, 1 << 30);
        var udpSendBuffer = CliOptions.Bytes("--udp-sndbuf", "Send buffer of each datagram socket (SO_SNDBUF) [default: 4m]", 4096, 1 << 30);
        var udpLowPorts = new Option<bool>("--udp-allow-low-ports") { Description = "Answer UDP datagrams from source ports below 1024 (off: reflection-loop risk, CVE-2024-2169)" };
        var noGreeting = new Option<bool>("--no-greeting") { Description = "Do not send the three greeting lines (plain RFC 862 echo)" };
        var quiet = new Option<bool>("--quiet", "-q") { Description = "Do not write received bytes to stdout" };
        var tag = new Option<bool>("--tag") { Description = "Prefix each line written to stdout with its connection's id, as [3] (0: a datagram)" };
        var maxConnections = new Option<int>("--max-connections")
        {
            Description = "Connections served at once; one more gets 'server busy: N connections' and is closed (0: unlimited)",
            HelpName = "N",
            DefaultValueFactory = _ => 10_000,
            CustomParser = r => CliOptions.ParseInteger(r, "--max-connections", 0, 10_000_000),
        };
        var idleTimeout = CliOptions.Duration("--idle-timeout", "Close a connection that has sent nothing for this long (0: never)", "300s");
        var sendTimeout = CliOptions.Duration("--send-timeout", "Reset a connection whose peer has not read for this long, so the server cannot send (0: never)", "60s");
        var shutdownTimeout = CliOptions.Duration("--shutdown-timeout", "On SIGINT/SIGTERM, how long connections may finish before they are aborted", "5s");
        var logLevel = new Option<LogLevel>("--log-level")
        {
            Description = "Least severe event written to stderr: Trace, Debug, Information, Warning, Error, Critical, None",
            DefaultValueFactory = _ => LogLevel.Information,
            CustomParser = r =>
            {
                string text = r.Tokens[0].Value;
                if (Enum.TryParse(text, ignoreCase: true, out LogLevel parsed) && Enum.IsDefined(parsed) && !int.TryParse(text, out _))
                {
                    return parsed;
                }

                r.AddError($"invalid --log-level value '{text}': expected one of Trace, Debug, Information, Warning, Error, Critical, None");
                return LogLevel.Information;
            },
        };

        var logFormat = new Option<string>("--log-format")
        {
            Description = "The event lines on stderr: text, or json (one JSON object a line, for log shippers)",
            HelpName = "text|json",
            DefaultValueFactory = _ => "text",
            Validators =
            {
                r =>
                {
                    if (r.Tokens.Count > 0 && r.Tokens[0].Value is not ("text" or "json"))
                    {
                        r.AddError($"invalid --log-format value '{r.Tokens[0].Value}': expected text or json");
                    }
                },
            },
        };

        var metrics = new Option<string?>("--metrics")
        {
            Description = "Serve Prometheus metrics at http://ADDR:PORT/metrics, on a listener of its own (outside the echo port's limits) [default: off]",
            HelpName = "addr:port",
        };

        var hexDump = HexDumpOption.Create("of every connection (TLS in the clear) and datagram");
        var engine = CliOptions.Engine("Stream connections on our own epoll loops (Linux x86-64) or on .NET's Socket API; auto picks epoll where it runs");
        var loops = CliOptions.Integer("--loops", "Event loops of the epoll engine (0: one per CPU this process may use)", 0, 0, 256);
        var busyPoll = CliOptions.Duration("--busy-poll", "Epoll engine: while traffic is dense, poll this long for the next events before sleeping (fewer wake-ups, more CPU; at most 10ms; 0: sleep at once)", "50us");

        var command = new Command("serve", "Run the TCP echo server: greet each client, then echo every byte back.")
        {
            port, bind, family.Four, family.Six, tcp, udp, udpRate, udpLowPorts, maxDatagram, udpReceiveBuffer, udpSendBuffer, unix, unixMode, noGreeting, quiet, tag, maxConnections, idleTimeout.Option, sendTimeout.Option, shutdownTimeout.Option, logLevel, logFormat, metrics, hexDump, engine, loops, busyPoll.Option,
            configuration.ConfigOption, configuration.PrintOption,
        };

        var tls = new ServeTlsOptions();
        var access = new ServeAccessOptions();
        foreach (var option in tls.All.Concat(access.All))
        {
            command.Options.Add(option);
        }

        command.SetAction(async (result, _) =>
        {
            IReadOnlyList<IPAddress> addresses = [];
            string? bindText = result.GetValue(bind);
            string? unixPath = result.GetValue(unix);
            if (unixPath is not null && bindText is not null)
            {
                return Program.FailUsage("serve", "--unix and --bind cannot be combined: a server listens on one or the other");
            }

            if (CliOptions.CheckUnixPath(unixPath) is { } unixError)
            {
                return Program.FailUsage("serve", unixError);
            }

            if (unixPath is not null && result.GetValue(udp) && result.GetValue(tcp))
            {
                return Program.FailUsage("serve", "--tcp --udp with --unix: a socket file is either a stream (--unix) or a datagram socket (--udp --unix); run one server per path");
            }

            foreach (var datagramOnly in new[] { maxDatagram, udpReceiveBuffer, udpSendBuffer })
            {
                if (result.GetValue(datagramOnly) is not null && !result.GetValue(udp))
                {
                    return Program.FailUsage("serve", $"{datagramOnly.Name} needs --udp");
                }
            }

            if (result.GetValue(unixMode) is not null && unixPath is null)
            {
                return Program.FailUsage("serve", "--unix-mode needs --unix");
            }

            if (busyPoll.Get(result) > TimeSpan.FromMilliseconds(10))
            {
                return Program.FailUsage("serve", $"invalid --busy-poll value: '{Durations.Format(busyPoll.Get(result)!.Value)}' is too long (at most 10ms: a loop that polls longer only burns CPU)");
            }

            if (!CliOptions.TryGetFamily(result, family, out var onlyFamily, out string? familyError))
            {
                return Program.FailUsage("serve", familyError!);
            }

            if (bindText is not null)
            {
                var resolved = await ResolveBindAsync(bindText).ConfigureAwait(false);
                if (resolved.Error is not null)
                {
                    return resolved.ExitCode == ExitCodes.Usage
                        ? Program.FailUsage("serve", resolved.Error)
                        : Program.Fail(resolved.ExitCode, resolved.Error);
                }

                addresses = onlyFamily is { } only ? resolved.Addresses.Where(a => a.AddressFamily == only).ToArray() : resolved.Addresses;
                if (addresses.Count == 0)
                {
                    return Program.FailUsage("serve", $"--bind {bindText} has no {(onlyFamily == AddressFamily.InterNetwork ? "IPv4" : "IPv6")} address");
                }
            }

            bool servesTcp = result.GetValue(tcp) || !result.GetValue(udp);
            var (tlsSettings, tlsUsage, tlsError) = tls.Read(result, servesTcp, unixPath is not null, ServeTlsOptions.SelfSignedNames(addresses));
            if (tlsUsage is not null)
            {
                return Program.FailUsage("serve", tlsUsage);
            }

            if (tlsError is not null)
            {
                return Program.Fail(ExitCodes.CannotListen, tlsError);
            }

            var (accessSettings, accessUsage, accessError) = access.Read(result, unixPath is not null);
            if (accessUsage is not null)
            {
                return Program.FailUsage("serve", accessUsage);
            }

            if (accessError is not null)
            {
                return Program.Fail(ExitCodes.CannotListen, accessError);
            }

            var (proxyStage, proxyUsage) = access.ReadProxy(result, unixPath is not null);
            if (proxyUsage is not null)
            {
                return Program.FailUsage("serve", proxyUsage);
            }

            IPEndPoint? metricsAt = null;
            if (result.GetValue(metrics) is { } metricsText && !TryParseMetricsEndPoint(metricsText, out metricsAt))
            {
                return Program.FailUsage("serve", $"invalid --metrics value '{metricsText}': expected ADDR:PORT (e.g. 127.0.0.1:9464, [::1]:9464) or PORT (on 127.0.0.1)");
            }

            var (inherited, inheritedNames, activationError) = SystemdSockets.Take();
            if (activationError is not null)
            {
                return Program.Fail(ExitCodes.CannotListen, activationError);
            }

            // What a reload (SIGHUP) may change: taken from the configuration at start, and again at each reload.
            EchoServerOptions Reloadable(ParseResult from, Internal.Access.AccessSettings? accessRules) => new()
            {
                MaxConnections = from.GetValue(maxConnections),
                IdleTimeout = idleTimeout.Get(from)!.Value,
                SendTimeout = sendTimeout.Get(from)!.Value,
                ShutdownTimeout = shutdownTimeout.Get(from)!.Value,
                UdpRate = from.GetValue(udpRate),
                Access = accessRules,
            };

            var options = Reloadable(result, accessSettings) with
            {
                Inherited = inherited,
                Stages = proxyStage is null ? [] : [proxyStage],
                Tls = tlsSettings,
                HealthPort = access.HealthPort(result),
                ReusePort = access.ReusePort(result),
                Port = result.GetValue(port),
                BindAddresses = addresses,
                UnixPath = unixPath,
                Family = onlyFamily,
                Tcp = servesTcp,
                Udp = result.GetValue(udp),
                UdpAllowLowPorts = result.GetValue(udpLowPorts),
                MaxDatagramSize = result.GetValue(maxDatagram),
                UdpReceiveBufferBytes = result.GetValue(udpReceiveBuffer),
                UdpSendBufferBytes = result.GetValue(udpSendBuffer),
                UnixMode = result.GetValue(unixMode),
                SendGreeting = !result.GetValue(noGreeting),
                Engine = result.GetValue(engine),
                EngineLoops = result.GetValue(loops),
                BusyPoll = busyPoll.Get(result)!.Value,
            };
            string? activation = inherited is null ? null
                : $"socket activation: serving the {inherited.Count} socket{(inherited.Count == 1 ? "" : "s")} systemd passed"
                    + (inheritedNames is { Length: > 0 } ? $" ({inheritedNames.Replace(':', ',')})" : "") + " instead of binding";
            ServeReload.Reloaded Reload(ParseResult again)
            {
                var (reloadedAccess, usage, error) = access.Read(again, unixPath is not null);
                if ((usage ?? error) is { } why)
                {
                    return new ServeReload.Reloaded(null, default, null, why);
                }

                var (reloadedTls, tlsUsageAgain, tlsErrorAgain) = tls.Read(again, servesTcp, unixPath is not null, ServeTlsOptions.SelfSignedNames(addresses));
                if ((tlsUsageAgain ?? tlsErrorAgain) is { } tlsWhy)
                {
                    return new ServeReload.Reloaded(null, default, null, tlsWhy);
                }

                return new ServeReload.Reloaded(Reloadable(again, reloadedAccess), again.GetValue(logLevel), reloadedTls, null);
            }

            var reload = new ServeReload(configuration, Reload);
            var output = new OutputSettings(result.GetValue(quiet), result.GetValue(tag), result.GetValue(logLevel), result.GetValue(logFormat) == "json", result.GetValue(hexDump));
            return await RunAsync(options, output, activation, metricsAt, reload).ConfigureAwait(false);
        });
        return command;
    }

    private static bool TryParseMetricsEndPoint(string text, out IPEndPoint? endPoint)
    {
        endPoint = null;
        if (int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int onlyPort) && onlyPort is > 0 and < 65536)
        {
            endPoint = new IPEndPoint(IPAddress.Loopback, onlyPort);
            return true;
        }

        return IPEndPoint.TryParse(text, out endPoint) && endPoint.Port > 0 && text.Contains(':', StringComparison.Ordinal)
            && (endPoint.AddressFamily == AddressFamily.InterNetwork || text.StartsWith('['));
    }

    /// <summary>Where the server's output goes: stdout (the received bytes, unless quiet), the log, the hex dump.</summary>
    private sealed record OutputSettings(bool Quiet, bool Tag, LogLevel Level, bool Json, string? HexDump);

    private static async Task<int> RunAsync(EchoServerOptions options, OutputSettings output, string? activation, IPEndPoint? metricsAt, ServeReload reload)
    {
        var level = output.Level;
        bool quiet = output.Quiet || output.HexDump == "-"; // the dump on stdout shows the bytes
        using var logger = new StderrLogger("echokit", level, output.Json);
        Internal.HexDump? dump = null;
        if (output.HexDump is { } dumpPath)
        {
            (dump, string? dumpError) = HexDumpOption.Open(dumpPath, logger);
            if (dumpError is not null)
            {
                return Program.Fail(ExitCodes.CannotListen, dumpError);
            }

            options = options with { HexDump = dump };
        }

        try
        {
            return await RunAsync(options, output with { Quiet = quiet }, activation, metricsAt, reload, logger).ConfigureAwait(false);
        }
        finally
        {
            if (dump is not null)
            {
                dump.Close(TimeSpan.FromSeconds(1));
                if (dump.DroppedBytes > 0)
                {
                    logger.LogWarning("--hex-dump {Name}: {Dropped} bytes were not dumped in all (the output fell behind)", output.HexDump, dump.DroppedBytes);
                }
            }
        }
    }

    private static async Task<int> RunAsync(EchoServerOptions options, OutputSettings output, string? activation, IPEndPoint? metricsAt, ServeReload reload, StderrLogger logger)
    {
        bool quiet = output.Quiet, tag = output.Tag;
        var level = output.Level;
        if (activation is not null)
        {
            logger.LogInformation("{Activation}", activation);
        }

        if (!quiet && !StandardStreams.OutputOpen)
        {
            logger.LogWarning("stdout is closed: received bytes are not printed (--quiet says so without this warning)");
        }

        StdoutPayloadSink? sink = quiet || !StandardStreams.OutputOpen
            ? null
            : new StdoutPayloadSink(StandardStreams.Output, escapeControls: StandardStreams.OutputIsTerminal, tag);
        var server = new EchoServer(options, logger, sink);

        // Nothing started: what stdout has queued is given a moment, then the one line and the exit code.
        async Task<int> FailToStartAsync(int exitCode, string message)
        {
            if (sink is not null)
            {
                await sink.DisposeAsync(TimeSpan.FromSeconds(1)).ConfigureAwait(false);
            }

            return Program.Fail(exitCode, message);
        }

        // Before the echo port: the "ready: serving" line (and READY=1) then means everything is up.
        string? metricsError = null;
        using var metricsEndpoint = metricsAt is null ? null : MetricsEndpoint.Start(metricsAt, out metricsError);
        if (metricsError is not null)
        {
            return await FailToStartAsync(ExitCodes.CannotListen, metricsError).ConfigureAwait(false);
        }

        if (metricsEndpoint is not null)
        {
            logger.WriteAnyway(LogLevel.Information, 1, $"listening on {metricsEndpoint.Url} (Prometheus metrics)");
        }

        var (otlp, otlpDescription, otlpError) = MetricsEndpoint.StartOtlp();
        using var otlpExporter = otlp;
        if (otlpError is not null)
        {
            return await FailToStartAsync(ExitCodes.Usage, otlpError).ConfigureAwait(false);
        }

        if (otlpDescription is not null)
        {
            logger.LogInformation("{Otlp}", otlpDescription);
        }

        var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int signals = 0;

        // We own SIGINT and SIGTERM (System.CommandLine's handler is off, see Program): the first one
        // starts a graceful stop bounded by --shutdown-timeout, a second one ends the process at once;
        // either way it exits 0. SIGHUP (which would kill the process and leave a socket file behind) reloads.
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            if (Interlocked.Increment(ref signals) == 1)
            {
                stop.TrySetResult();
                return;
            }

            logger.LogWarning("{Signal} again during the graceful stop: exiting now without waiting for the connections", SignalName(context.Signal));
            logger.Flush();
            Environment.Exit(ExitCodes.Ok);
        }

        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        using var sighup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, context =>
        {
            context.Cancel = true;
            reload.Run(server, logger);
        });
        try
        {
            server.Start();
        }
        catch (ListenFailedException e)
        {
            return await FailToStartAsync(ExitCodes.CannotListen, e.Message + Hint(e)).ConfigureAwait(false);
        }
        catch (TlsConfigurationException e)
        {
            return await FailToStartAsync(ExitCodes.CannotListen, "TLS: " + e.Message).ConfigureAwait(false);
        }

        if (server.TlsCertificate is { } certificate)
        {
            // Which certificate is served is, like where, something a user must see whatever the level.
            logger.WriteAnyway(LogLevel.Information, 17, $"TLS certificate: {Describe(certificate)}"
                + (options.Tls!.Certificate.IsSelfSigned ? " (self-signed, made at start: pin it with connect --tls-pin)" : ""));
        }

        if (!logger.IsEnabled(LogLevel.Information) && level != LogLevel.None)
        {
            // Where it listens is the one thing a user must see, whatever the level (the port may be the OS's choice).
            foreach (string where in server.ListeningOn)
            {
                logger.WriteAnyway(LogLevel.Information, 1, $"listening on {where}");
            }
        }

        using var systemd = SystemdNotifier.FromEnvironment(logger);
        systemd?.Ready(() => server.ActiveConnections);
        await stop.Task.ConfigureAwait(false);
        systemd?.Stopping(server.ActiveConnections);
        long stopStarted = Environment.TickCount64;
        await server.StopAsync().ConfigureAwait(false);
        if (sink is not null)
        {
            // The rest of the shutdown timeout, at least a moment: the drain keeps its deadline even when stdout stalls.
            long left = (long)options.ShutdownTimeout.TotalMilliseconds - (Environment.TickCount64 - stopStarted);
            await sink.DisposeAsync(TimeSpan.FromMilliseconds(Math.Max(left, 200))).ConfigureAwait(false);
        }

        return ExitCodes.Ok;
    }

    internal static string Describe(System.Security.Cryptography.X509Certificates.X509Certificate2 certificate) =>
        $"\"{certificate.Subject}\" sha256 {TlsText.Fingerprint(certificate)}, valid until {certificate.NotAfter.ToUniversalTime():yyyy-MM-dd HH:mm} UTC";

    private static string DirectoryOf(UnixDomainSocketEndPoint unix) =>
        Path.GetDirectoryName(Path.GetFullPath(unix.ToString())) is { Length: > 0 } directory ? directory : "/";

    private static string SignalName(PosixSignal signal) => signal switch
    {
        PosixSignal.SIGINT => "SIGINT (Ctrl+C)",
        PosixSignal.SIGTERM => "SIGTERM",
        _ => signal.ToString(),
    };

    private static string Hint(ListenFailedException e) => e.SocketError switch
    {
        SocketError.AddressNotAvailable when e.EndPoint is UnixDomainSocketEndPoint unix =>
            $"; the directory {DirectoryOf(unix)} does not exist: create it or choose another path",
        SocketError.AccessDenied when e.EndPoint is UnixDomainSocketEndPoint unix =>
            $"; this user may not create files in {DirectoryOf(unix)}: check its permissions or choose another path",
        SocketError.AddressAlreadyInUse when e.EndPoint is UnixDomainSocketEndPoint =>
            e.InnerException is IOException io ? $" ({io.Message})" : "; a server is listening on that socket file: stop it or choose another path",
        SocketError.AddressAlreadyInUse when e.EndPoint is IPEndPoint ip =>
            $"; another process holds the port: find it with `ss -ltnp 'sport = :{ip.Port}'`, or choose another --port",
        SocketError.AccessDenied => "; ports below 1024 need root or CAP_NET_BIND_SERVICE: choose a --port of 1024 or more",
        SocketError.AddressNotAvailable => "; this machine has no such address: check `ip addr`, or omit --bind to listen on all interfaces",
        _ => "",
    };

    private static async Task<(IReadOnlyList<IPAddress> Addresses, string? Error, int ExitCode)> ResolveBindAsync(string text)
    {
        string host = text.Length > 1 && text[0] == '[' && text[^1] == ']' ? text[1..^1] : text;
        if (IPAddress.TryParse(host, out var literal))
        {
            return ([literal], null, ExitCodes.Ok);
        }

        if (host.Length == 0 || host.Contains(' ', StringComparison.Ordinal))
        {
            return ([], $"invalid --bind value '{text}': not an IP address or host name", ExitCodes.Usage);
        }

        try
        {
            var addresses = await Dns.GetHostAddressesAsync(host).ConfigureAwait(false);
            return addresses.Length > 0
                ? (addresses, null, ExitCodes.Ok)
                : ([], $"cannot resolve --bind {text}: {SocketErrorText.Describe(SocketError.HostNotFound)}", ExitCodes.HostNotFound);
        }
        catch (SocketException e)
        {
            return ([], $"cannot resolve --bind {text}: {SocketErrorText.Describe(e.SocketErrorCode)}", ExitCodes.HostNotFound);
        }
    }
}

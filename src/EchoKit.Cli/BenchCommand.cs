using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using EchoKit.Bench;
using EchoKit.Client;
using Spectre.Console;

namespace EchoKit.Cli;

/// <summary><c>echokit bench</c>: load an echo server and report what its users would see.</summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var target = new Argument<string?>("target") { Description = "Server to load: host, host:port, [::1]:8888 (port default 8888)", Arity = ArgumentArity.ZeroOrOne };
        var unix = new Option<string?>("--unix") { Description = "Load the Unix domain socket at this path instead of a TCP target (a datagram socket with --udp)", HelpName = "path" };
        var connections = CliOptions.Integer("--connections", "Connections, all active", 50, 1, 100_000, "-c");
        var size = CliOptions.Integer("--size", "Bytes per message", 64, 1, LoadGenerator.MaxMessageSize, "-s");
        var depth = CliOptions.Integer("--depth", "Messages in flight per connection (1: ping-pong)", 1, 1, 65_536, "-d");
        var duration = CliOptions.Duration("--duration", "How long to measure", "10s", allowZero: false);
        duration.Option.Aliases.Add("-t");
        var warmup = CliOptions.Duration("--warmup", "Load before measuring starts", "1s");
        var rate = new Option<double?>("--rate")
        {
            Description = "Open loop: messages per second in total, sent on schedule; latency counts from the schedule (no coordinated omission) [default: closed loop]",
            HelpName = "msgs/s",
            CustomParser = r => double.TryParse(r.Tokens[0].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v > 0 && double.IsFinite(v)
                ? v
                : Invalid(r, $"invalid --rate value '{r.Tokens[0].Value}': expected a positive number of messages per second"),
        };
        var skipGreeting = new Option<int?>("--skip-greeting")
        {
            Description = "Greeting bytes to read and discard after connecting (0: none) [default: detect]",
            HelpName = "bytes",
            CustomParser = r => CliOptions.ParseInteger(r, "--skip-greeting", 0, 1 << 20),
        };
        var connectTimeout = CliOptions.Duration("--connect-timeout", "Give up on a connection after this long", "10s", allowZero: false);
        var echoTimeout = CliOptions.Duration("--echo-timeout", "A connection with messages in flight and no byte back for this long has stopped echoing: the run fails (exit 11)", "2s", allowZero: false);
        var udp = new Option<bool>("--udp", "-u") { Description = "UDP datagrams, --depth in flight per flow (each flow its own socket), every one checked; lost, late and reordered ones counted" };
        var udpTimeout = CliOptions.Duration("--udp-timeout", "With --udp: a datagram not echoed within this long is lost (its flow goes on)", "200ms", allowZero: false);
        var reconnect = new Option<bool>("--reconnect") { Description = "Handshake rate: each connection connects (and with --tls shakes hands), reads the greeting, echoes one message, closes, again; reports cycles/s" };
        var tls = new ClientTlsOptions();
        var proxy = ProxyClientOptions.Create();
        var json = new Option<bool>("--json") { Description = "Print one JSON object (echoload's field names) instead of the report" };
        var engine = CliOptions.Engine("Drive TCP/Unix connections from our own epoll loops (Linux x86-64) or with .NET's async Socket calls; auto picks epoll where it runs");

        var command = new Command("bench", "Load an echo server: messages/s, MB/s and latency percentiles, every echoed byte checked.")
        {
            target, unix, udp, connections, size, depth, duration.Option, warmup.Option, rate, skipGreeting, connectTimeout.Option, echoTimeout.Option, udpTimeout.Option, reconnect, json, engine,
        };
        foreach (var option in tls.All.Append(proxy.Version))
        {
            command.Options.Add(option);
        }
        command.SetAction(async (result, cancellationToken) =>
        {
            string? unixPath = result.GetValue(unix);
            if (CliOptions.CheckUnixPath(unixPath) is { } unixError)
            {
                return Program.FailUsage("bench", unixError);
            }

            string? targetText = result.GetValue(target);
            if ((unixPath is null) == (targetText is null))
            {
                return Program.FailUsage("bench", "give either a HOST[:PORT] target or --unix PATH");
            }

            var (tlsOptions, tlsUsage, tlsError) = tls.Read(result);
            if (tlsUsage is not null)
            {
                return Program.FailUsage("bench", tlsUsage);
            }

            if (tlsError is not null)
            {
                return Program.Fail(ExitCodes.TlsFailed, tlsError);
            }

            var (proxyHeader, proxyUsage) = proxy.Read(result, result.GetValue(udp) || unixPath is not null);
            if (proxyUsage is not null)
            {
                return Program.FailUsage("bench", proxyUsage);
            }

            if (result.GetValue(udp) && (tlsOptions is not null || result.GetValue(reconnect)))
            {
                return Program.FailUsage("bench", tlsOptions is not null ? "--tls is for stream connections: leave out --udp" : "--reconnect is for stream connections: leave out --udp");
            }

            if (result.GetValue(reconnect) && (result.GetValue(rate) is not null || result.GetValue(depth) != 1))
            {
                return Program.FailUsage("bench", "--reconnect sends one message per connection: leave out --rate and --depth");
            }

            if (result.GetValue(udp))
            {
                bool loops = EchoServer.EpollSupported && result.GetValue(engine) != EchoEngine.Socket;
                string? udpError = result.GetValue(size) < UdpLoadLoop.HeaderBytes
                        ? $"with --udp, --size must be at least {UdpLoadLoop.HeaderBytes} (each datagram carries a {UdpLoadLoop.HeaderBytes}-byte header: flow, check word, sequence number)"
                    : unixPath is null && result.GetValue(size) > MaxUdpPayload ? $"with --udp, --size must be at most {MaxUdpPayload} (the largest UDP payload over IPv4)"
                    : !loops && result.GetValue(depth) != 1 ? "--udp on the socket engine measures ping-pong only: leave --depth at 1 (or use the epoll engine)"
                    : !loops && result.GetValue(rate) is not null ? "--udp on the socket engine has no open loop: leave out --rate (or use the epoll engine)"
                    : null;
                if (udpError is not null)
                {
                    return Program.FailUsage("bench", udpError);
                }
            }
            else if (result.GetValue(udpTimeout.Option) is not null)
            {
                return Program.FailUsage("bench", "--udp-timeout needs --udp");
            }

            string host = unixPath ?? "";
            int port = 0;
            if (targetText is not null && !ConnectCommand.TryParseTarget(targetText, null, out host, out port, out string? error))
            {
                return Program.FailUsage("bench", error!);
            }

            var options = new BenchOptions
            {
                Host = host,
                Port = port,
                UnixPath = unixPath,
                Udp = result.GetValue(udp),
                SkipGreeting = result.GetValue(udp) ? 0 : result.GetValue(skipGreeting),
                Connections = result.GetValue(connections),
                MessageSize = result.GetValue(size),
                Depth = result.GetValue(depth),
                Duration = duration.Get(result)!.Value,
                Warmup = warmup.Get(result)!.Value,
                Rate = result.GetValue(rate),
                ConnectTimeout = connectTimeout.Get(result)!.Value,
                EchoTimeout = echoTimeout.Get(result)!.Value,
                UdpTimeout = udpTimeout.Get(result)!.Value,
                Tls = tlsOptions is not null,
                TlsClient = tlsOptions,
                Reconnect = result.GetValue(reconnect),
                ProxyHeaderVersion = proxyHeader?.Version,
                Engine = result.GetValue(engine),
            };
            return await RunAsync(options, result.GetValue(json)).ConfigureAwait(false);
        });
        return command;
    }

    private const int MaxUdpPayload = 65_507;

    private static double Invalid(System.CommandLine.Parsing.ArgumentResult result, string message)
    {
        result.AddError(message);
        return 0;
    }

    private static async Task<int> RunAsync(BenchOptions options, bool json)
    {
        var generator = new LoadGenerator(options);

        // The first Ctrl+C (or SIGTERM) ends the run early and reports what was measured so far, like
        // iperf3; a second one is left to its default action and ends the process at once. The handler
        // only sets a flag: nothing may write to the console while the live display runs.
        void OnSignal(PosixSignalContext context)
        {
            if (!generator.StoppedEarly)
            {
                context.Cancel = true;
                generator.StopEarly();
            }
        }

        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        var run = generator.RunAsync();
        BenchResult result;
        try
        {
            await ShowProgressAsync(generator, run).ConfigureAwait(false);
            result = await run.ConfigureAwait(false);
        }
        catch (ConnectFailedException e)
        {
            return Program.Fail(e.InnerException is TlsHandshakeException ? ExitCodes.TlsFailed : ConnectCommand.ExitCodeOf(e), e.Message);
        }

        if (generator.StoppedEarly)
        {
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"echokit bench: stopped early by a signal: {result.Seconds:0.0} s measured of {options.Duration.TotalSeconds:0.0} s"));
        }

        if (json)
        {
            Print(ToJson(result));
        }
        else
        {
            PrintReport(options, result);
        }

        if (result.Mismatches > 0)
        {
            string hint = result.Unsolicited
                ? "; the server sent more than it was sent (a greeting? give its length with --skip-greeting N, or leave --skip-greeting out to detect it)"
                : "";
            return Program.Fail(ExitCodes.BenchMismatch, $"{result.Mismatches} echoed bytes differed from what was sent{hint}");
        }

        if (options.Reconnect && result.Errors * 100 > result.Messages + result.Errors)
        {
            return Program.Fail(ExitCodes.BenchConnectionsFailed, string.Create(CultureInfo.InvariantCulture,
                $"{result.Errors} of {result.Messages + result.Errors} connect cycles failed; the first: {generator.FirstCycleError ?? "unknown"}"));
        }

        if (result.Udp && result.NoEcho * 100 > result.Connections)
        {
            return Program.Fail(ExitCodes.BenchNoEcho, string.Create(CultureInfo.InvariantCulture,
                $"{result.NoEcho} of {result.Connections} UDP flows never got an echo: every datagram lost ({result.Lost} in the measured window, {Durations.Format(options.UdpTimeout)} timeout; is it a UDP echo server, and is it stalled?)"));
        }

        if (!result.Udp && result.NoEcho > 0)
        {
            string what = result.Messages == 0 ? "no message came back at all" : $"no byte came back for {Durations.Format(options.EchoTimeout)} with messages in flight";
            return Program.Fail(ExitCodes.BenchNoEcho,
                $"{result.NoEcho} of {result.Connections} connections stopped echoing: {what} (is it an echo server, and is it stalled?)");
        }

        long failed = result.Connections - result.ActiveAtEnd;
        if (failed * 100 > result.Connections)
        {
            long dropped = failed - result.ConnectFailures;
            string why = dropped == 0 ? ""
                : generator.FirstDropError is { } error ? $"; the first dropped: {SocketErrorText.Describe(error)}"
                : "; the first dropped: closed by the server";
            string what = options.Udp ? "UDP flows" : "connections";
            return Program.Fail(ExitCodes.BenchConnectionsFailed,
                $"{failed} of {result.Connections} {what} failed ({result.ConnectFailures} could not connect, {dropped} dropped{why})");
        }

        return ExitCodes.Ok;
    }

    /// <summary>A live display on a terminal (stderr); one plain line a second when stderr is redirected.</summary>
    private static async Task ShowProgressAsync(LoadGenerator generator, Task run)
    {
        if (!Console.IsErrorRedirected)
        {
            var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
            await console.Status().StartAsync("connecting", async context =>
            {
                // Nothing else writes to the console while this runs (Spectre's live displays require it).
                long last = 0;
                while (!run.IsCompleted)
                {
                    await Task.WhenAny(run, Task.Delay(250)).ConfigureAwait(false);
                    var p = generator.Snapshot();
                    context.Status($"{p.Phase} {p.Elapsed.TotalSeconds:0.0}s  {p.Connected} connected  {p.Messages:N0} messages  ({(p.Messages - last) * 4:N0}/s)  {p.Errors} errors  {p.Mismatches} mismatches");
                    last = p.Messages;
                }
            }).ConfigureAwait(false);
            return;
        }

        long previous = 0;
        while (!run.IsCompleted)
        {
            await Task.WhenAny(run, Task.Delay(1000)).ConfigureAwait(false);
            if (run.IsCompleted)
            {
                break;
            }

            var p = generator.Snapshot();
            Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"echokit bench: {p.Phase} t={p.Elapsed.TotalSeconds:0}s connected={p.Connected} messages={p.Messages} rate={p.Messages - previous}/s errors={p.Errors} mismatches={p.Mismatches}"));
            previous = p.Messages;
        }
    }

    private static void PrintReport(BenchOptions options, BenchResult r)
    {
        var culture = CultureInfo.InvariantCulture;
        string target = options.UnixPath is { } path ? "unix:" + path : $"{options.Host}:{options.Port}";
        string mode = options.Reconnect ? $"reconnecting ({(options.Tls ? "TLS handshake" : "connect")}, greeting, one echo, close)"
            : options.Rate is { } rate ? string.Create(culture, $"open loop at {rate:0} msgs/s") : "closed loop";
        Print(string.Create(culture, $"{target}{(options.Tls ? " (TLS)" : "")}  {r.Connections} connections, {r.MessageSize} B messages, depth {r.Depth}, {mode}, {r.Seconds:0.0} s measured"));
        Print(options.Reconnect
            ? string.Create(culture, $"  throughput  {r.MessagesPerSecond,12:N0} cycles/s{(options.Tls ? " (handshakes/s)" : "")}")
            : string.Create(culture, $"  throughput  {r.MessagesPerSecond,12:N0} msgs/s  {r.MegabytesPerSecond,10:0.00} MB/s"));
        Print(string.Create(culture, $"  latency     p50 {r.P50Us:0.0} us  p90 {r.P90Us:0.0} us  p99 {r.P99Us:0.0} us  p99.9 {r.P999Us:0.0} us  max {r.MaxUs:0.0} us"));
        Print(string.Create(culture, $"  messages    {r.Messages:N0}   errors {r.Errors}   mismatches {r.Mismatches}   connect failures {r.ConnectFailures}{(r.NoEcho > 0 ? $"   no echo {r.NoEcho}" : "")}"));
        if (r.Udp)
        {
            Print(string.Create(culture, $"  datagrams   lost {r.Lost:N0} ({r.LostPercent:0.###} %, not back within {r.UdpTimeoutMs:0} ms)   late {r.Late:N0}   reordered {r.Reordered:N0}"));
        }
    }

    /// <summary>A line of the report on stdout; a stdout that is closed or fails is one warning, and the exit code still tells.</summary>
    private static void Print(string line)
    {
        StandardStreams.Output.WarnIfClosed("the report is not printed");
        StandardStreams.Output.Write(System.Text.Encoding.UTF8.GetBytes(line + "\n"));
    }

    internal static string ToJson(BenchResult r)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteNumber("conns", r.Connections);
            writer.WriteNumber("size", r.MessageSize);
            writer.WriteNumber("depth", r.Depth);
            writer.WriteNumber("seconds", Math.Round(r.Seconds, 3));
            writer.WriteNumber("msgs", r.Messages);
            writer.WriteNumber("msgs_per_s", Math.Round(r.MessagesPerSecond, 1));
            writer.WriteNumber("mbytes_per_s", Math.Round(r.MegabytesPerSecond, 2));
            writer.WriteNumber("p50_us", Math.Round(r.P50Us, 1));
            writer.WriteNumber("p90_us", Math.Round(r.P90Us, 1));
            writer.WriteNumber("p99_us", Math.Round(r.P99Us, 1));
            writer.WriteNumber("p999_us", Math.Round(r.P999Us, 1));
            writer.WriteNumber("max_us", Math.Round(r.MaxUs, 1));
            writer.WriteNumber("errors", r.Errors);
            writer.WriteNumber("mismatches", r.Mismatches);
            writer.WriteNumber("connect_failures", r.ConnectFailures);
            writer.WriteNumber("active_at_end", r.ActiveAtEnd);
            writer.WriteNumber("no_echo", r.NoEcho);
            if (r.Udp)
            {
                writer.WriteString("proto", "udp");
                writer.WriteNumber("lost", r.Lost);
                writer.WriteNumber("late", r.Late);
                writer.WriteNumber("reordered", r.Reordered);
                writer.WriteNumber("lost_pct", Math.Round(r.LostPercent, 3));
                writer.WriteNumber("udp_timeout_ms", r.UdpTimeoutMs);
                writer.WriteNumber("silent_flows", r.NoEcho);
            }
            writer.WriteEndObject();
        }

        return System.Text.Encoding.UTF8.GetString(buffer.ToArray());
    }
}

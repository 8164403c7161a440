using System.CommandLine;
using System.Net.Sockets;
using EchoKit.Client;

namespace EchoKit.Cli;

/// <summary><c>echokit connect</c>: the client, interactive like nc, or one-shot with --send.</summary>
internal static class ConnectCommand
{
    private const int DefaultPort = 8888;

    public static Command Create()
    {
        var host = new Argument<string?>("host") { Description = "Server name or address: host, 1.2.3.4, ::1, [::1]:8888 or host:port", Arity = ArgumentArity.ZeroOrOne };
        var unix = new Option<string?>("--unix") { Description = "Connect to this Unix domain socket file instead of HOST (with --udp: a datagram socket)", HelpName = "path" };
        var family = CliOptions.FamilyOptions();
        var udp = new Option<bool>("--udp", "-u") { Description = "UDP: each stdin line (or the --send text) is one datagram; replies are printed, missing ones reported after --wait" };
        var port = new Argument<string?>("port") { Description = $"Server port [default: {DefaultPort}]", Arity = ArgumentArity.ZeroOrOne };
        var send = new Option<string?>("--send", "-s")
        {
            Description = "One-shot: send TEXT (C escapes \\r \\n \\t \\0 \\\\ \\xHH), print the reply, exit",
            HelpName = "text",
        };
        var expect = new Option<int?>("--expect", "-e")
        {
            Description = "One-shot: stop once N bytes have arrived (fewer is an error, exit 8)",
            HelpName = "N",
            CustomParser = r => CliOptions.ParseInteger(r, "--expect", 1, int.MaxValue),
        };
        var wait = CliOptions.Duration("--wait", "One-shot: stop when nothing has arrived for this long", "2s", allowZero: false);
        var halfClose = new Option<bool>("--half-close", "-N")
        {
            Description = "One-shot: shut down the send side after sending (as nc -N); interactive mode always does at stdin EOF",
        };
        var connectTimeout = CliOptions.Duration("--connect-timeout", "Give up connecting to an address after this long", "10s", allowZero: false);
        var recvTimeout = CliOptions.Duration("--recv-timeout", "Fail when no byte arrives for this long [default: none]", null, allowZero: false);
        var sendTimeout = CliOptions.Duration("--send-timeout", "Fail when a send makes no progress for this long [default: none]", null, allowZero: false);

        var tls = new ClientTlsOptions();
        var proxy = ProxyClientOptions.Create();
        var hexDump = HexDumpOption.Create("of the connection");
        var command = new Command("connect", "Connect to a TCP server: stdin to the socket and the socket to stdout, or one-shot with --send.")
        {
            host, port, family.Four, family.Six, udp, unix, send, expect, wait.Option, halfClose, connectTimeout.Option, recvTimeout.Option, sendTimeout.Option, hexDump,
        };
        foreach (var option in tls.All.Concat([proxy.Version, proxy.Source]))
        {
            command.Options.Add(option);
        }

        command.SetAction(async (result, cancellationToken) =>
        {
            string? unixPath = result.GetValue(unix);
            if (CliOptions.CheckUnixPath(unixPath) is { } unixError)
            {
                return Program.FailUsage("connect", unixError);
            }

            string? hostText = result.GetValue(host);
            if (unixPath is not null && hostText is not null)
            {
                return Program.FailUsage("connect", "give either HOST [PORT] or --unix PATH, not both");
            }

            if (!CliOptions.TryGetFamily(result, family, out var onlyFamily, out string? familyError))
            {
                return Program.FailUsage("connect", familyError!);
            }

            string targetHost = "";
            int targetPort = 0;
            if (unixPath is null)
            {
                if (hostText is null)
                {
                    return Program.FailUsage("connect", "missing HOST (or --unix PATH)");
                }

                if (!TryParseTarget(hostText, result.GetValue(port), out targetHost, out targetPort, out string? error))
                {
                    return Program.FailUsage("connect", error!);
                }
            }

            byte[]? payload = null;
            if (result.GetValue(send) is { } text && !CEscapes.TryDecode(text, out payload, out string escapeError))
            {
                return Program.FailUsage("connect", $"invalid --send value: {escapeError}");
            }

            var (tlsOptions, tlsUsage, tlsError) = tls.Read(result);
            if (tlsUsage is not null)
            {
                return Program.FailUsage("connect", tlsUsage);
            }

            if (tlsError is not null)
            {
                return Program.Fail(ExitCodes.TlsFailed, tlsError);
            }

            var (proxyHeader, proxyUsage) = proxy.Read(result, unixPath is not null || result.GetValue(udp));
            if (proxyUsage is not null)
            {
                return Program.FailUsage("connect", proxyUsage);
            }

            if (tlsOptions is not null && result.GetValue(udp))
            {
                return Program.FailUsage("connect", "--tls is for stream connections: leave out --udp (DTLS is not supported)");
            }

            if (result.GetValue(udp) && result.GetValue(hexDump) is not null)
            {
                return Program.FailUsage("connect", "--hex-dump is for stream connections: leave out --udp");
            }

            if (result.GetValue(udp))
            {
                // --wait bounds the wait for replies after the last datagram; --recv-timeout, when shorter, too.
                var replyWait = recvTimeout.Get(result) is { } r && r < wait.Get(result)!.Value ? r : wait.Get(result)!.Value;
                return unixPath is not null
                    ? await UdpSession.RunUnixAsync(unixPath, payload, replyWait, connectTimeout.Get(result)!.Value).ConfigureAwait(false)
                    : await UdpSession.RunAsync(targetHost, targetPort, onlyFamily, payload, replyWait).ConfigureAwait(false);
            }

            var settings = new ClientSettings(
                result.GetValue(expect), wait.Get(result)!.Value, result.GetValue(halfClose),
                connectTimeout.Get(result)!.Value, recvTimeout.Get(result), sendTimeout.Get(result), onlyFamily, tlsOptions, proxyHeader, result.GetValue(hexDump));
            return await RunAsync(unixPath, targetHost, targetPort, payload, settings).ConfigureAwait(false);
        });
        return command;
    }

    private sealed record ClientSettings(int? Expect, TimeSpan Wait, bool HalfClose, TimeSpan ConnectTimeout, TimeSpan? RecvTimeout, TimeSpan? SendTimeout,
        AddressFamily? Family, TlsClientOptions? Tls, ProxyClientOptions.Header? Proxy, string? HexDump);

    /// <summary>Accepts "host", "host PORT", "host:port", "[v6]:port", "[v6]" and a bare IPv6 literal.</summary>
    internal static bool TryParseTarget(string hostText, string? portText, out string host, out int port, out string? error)
    {
        host = hostText;
        port = DefaultPort;
        error = null;
        string? embeddedPort = null;
        if (hostText.StartsWith('['))
        {
            int close = hostText.IndexOf(']', StringComparison.Ordinal);
            if (close < 0 || (close + 1 < hostText.Length && hostText[close + 1] != ':'))
            {
                error = $"invalid host '{hostText}': expected [IPv6] or [IPv6]:port";
                return false;
            }

            host = hostText[1..close];
            embeddedPort = close + 2 <= hostText.Length - 1 ? hostText[(close + 2)..] : (close + 1 < hostText.Length ? "" : null);
        }
        else if (hostText.Count(c => c == ':') == 1)
        {
            int colon = hostText.IndexOf(':', StringComparison.Ordinal);
            host = hostText[..colon];
            embeddedPort = hostText[(colon + 1)..];
        }

        if (host.Length == 0)
        {
            error = $"invalid host '{hostText}': empty host name";
            return false;
        }

        if (embeddedPort is not null && portText is not null)
        {
            error = $"port given twice: '{hostText}' and '{portText}'";
            return false;
        }

        string? chosen = embeddedPort ?? portText;
        if (chosen is not null && !CliOptions.TryParsePort(chosen, 1, out port))
        {
            error = $"invalid port '{chosen}': expected a number from 1 to 65535";
            return false;
        }

        return true;
    }

    private static async Task<int> RunAsync(string? unixPath, string host, int port, byte[]? payload, ClientSettings settings)
    {
        EchoKit.Internal.HexDump? dump = null;
        if (settings.HexDump is { } dumpPath)
        {
            (dump, string? dumpError) = HexDumpOption.Open(dumpPath, new WarningLineLogger());
            if (dumpError is not null)
            {
                return Program.Fail(ExitCodes.Usage, dumpError);
            }
        }

        try
        {
            return await RunAsync(unixPath, host, port, payload, settings, dump).ConfigureAwait(false);
        }
        finally
        {
            dump?.Close(TimeSpan.FromSeconds(1));
        }
    }

    private static async Task<int> RunAsync(string? unixPath, string host, int port, byte[]? payload, ClientSettings settings, EchoKit.Internal.HexDump? dump)
    {
        Socket socket;
        try
        {
            socket = unixPath is not null
                ? await SocketConnector.ConnectUnixAsync(unixPath, settings.ConnectTimeout).ConfigureAwait(false)
                : await SocketConnector.ConnectAsync(host, port, settings.ConnectTimeout, settings.Family).ConfigureAwait(false);
        }
        catch (ConnectFailedException e)
        {
            return Program.Fail(ExitCodeOf(e), e.Message);
        }

        Console.Error.WriteLine($"echokit: connected to {EndPointText.Format(socket.RemoteEndPoint)}");
        long headerLength = 0;
        if (settings.Proxy is { } header)
        {
            // The PROXY header goes first, before TLS and before any byte of ours, as a balancer sends it.
            byte[] bytes = header.For(socket);
            await socket.SendAllAsync(bytes).ConfigureAwait(false);
            dump?.Record(1, socket.RemoteEndPoint, inbound: false, 0, bytes);
            headerLength = bytes.Length;
        }

        System.Net.Security.SslStream? secure = null;
        if (settings.Tls is { } tls)
        {
            if (tls.Insecure)
            {
                Console.Error.WriteLine("echokit: warning: --tls-insecure: the server's certificate is not checked; anyone on the path can read and change this connection");
            }

            try
            {
                secure = await TlsConnector.AuthenticateAsync(socket, unixPath is null ? host : "localhost", tls, settings.ConnectTimeout).ConfigureAwait(false);
            }
            catch (TlsHandshakeException e)
            {
                socket.Dispose();
                return Program.Fail(ExitCodes.TlsFailed, e.Message);
            }

            Console.Error.WriteLine(ClientTlsOptions.Describe(secure));
        }

        using (var channel = new ClientChannel(socket, secure) { Dump = dump, SentBefore = headerLength })
        {
            try
            {
                return payload is null
                    ? await InteractiveSession.RunAsync(channel, settings.RecvTimeout, settings.SendTimeout, print: settings.HexDump != "-").ConfigureAwait(false)
                    : await OneShotAsync(channel, payload, settings).ConfigureAwait(false);
            }
            catch (IOException e) when (e.InnerException is SocketException se)
            {
                string target = unixPath is not null ? "unix:" + unixPath : $"{host}:{port}";
                return Program.Fail(ExitCodeOf(se.SocketErrorCode), $"connection to {target} failed: {SocketErrorText.Describe(se.SocketErrorCode)}");
            }
            catch (IOException e) when (secure is not null)
            {
                return Program.Fail(ExitCodes.TlsFailed, $"TLS connection failed: {e.Message}");
            }
            catch (SocketException e)
            {
                string target = unixPath is not null ? "unix:" + unixPath : $"{host}:{port}";
                return Program.Fail(ExitCodeOf(e.SocketErrorCode), $"connection to {target} failed: {SocketErrorText.Describe(e.SocketErrorCode)}");
            }
            catch (TransferTimeoutException e)
            {
                return Program.Fail(ExitCodes.TimedOut, e.Message);
            }
        }
    }

    private static async Task<int> OneShotAsync(ClientChannel channel, byte[] payload, ClientSettings settings)
    {
        await channel.SendAsync(payload, settings.SendTimeout).ConfigureAwait(false);
        if (settings.HalfClose)
        {
            await channel.ShutdownSendAsync().ConfigureAwait(false);
        }

        var stdout = StandardStreams.Output;
        bool print = settings.HexDump != "-"; // the dump on stdout shows them
        if (print)
        {
            stdout.WarnIfClosed("received bytes are not printed");
        }

        var buffer = new byte[64 * 1024];
        long total = 0;
        string ending = "no data for " + Durations.Format(settings.Wait);
        // An echo server's answer ends with what was sent: stop there rather than wait --wait for more.
        // Without --expect and -N only (with -N the server closes when done); a server that answers something
        // else still gets --wait.
        var tail = settings.Expect is null && !settings.HalfClose && payload.Length > 0 ? new byte[payload.Length] : null;
        int tailLength = 0;
        while (settings.Expect is null || total < settings.Expect)
        {
            // --wait ends the reply normally; --recv-timeout, when shorter, is an error.
            bool recvTimeoutFirst = settings.RecvTimeout is { } r && r <= settings.Wait;
            int received = await channel.ReceiveAsync(buffer, recvTimeoutFirst ? settings.RecvTimeout : settings.Wait,
                throwOnTimeout: recvTimeoutFirst).ConfigureAwait(false);
            if (received < 0)
            {
                break; // --wait passed with no data
            }

            if (received == 0)
            {
                ending = "connection closed by peer";
                break;
            }

            int toPrint = settings.Expect is { } e ? (int)Math.Min(received, e - total) : received;
            if (print)
            {
                stdout.Write(buffer.AsSpan(0, toPrint));
            }

            total += received;
            if (tail is not null && EndsWithEcho(tail, ref tailLength, buffer.AsSpan(0, received), payload))
            {
                ending = "the echo of what was sent came back";
                break;
            }
        }

        Console.Error.WriteLine($"echokit: received {total} bytes; {(settings.Expect is { } n && total >= n ? $"{n} expected bytes arrived" : ending)}");
        if (settings.Expect is { } expected && total < expected)
        {
            return Program.Fail(ExitCodes.ShortRead, $"expected {expected} bytes, received {total} ({ending})");
        }

        return ExitCodes.Ok;
    }

    /// <summary>Keeps the last bytes received in <paramref name="tail"/>; true when they are <paramref name="payload"/>.</summary>
    private static bool EndsWithEcho(byte[] tail, ref int tailLength, ReadOnlySpan<byte> received, byte[] payload)
    {
        if (received.Length >= tail.Length)
        {
            received[^tail.Length..].CopyTo(tail);
            tailLength = tail.Length;
        }
        else
        {
            int keep = Math.Min(tailLength, tail.Length - received.Length);
            tail.AsSpan(tailLength - keep, keep).CopyTo(tail);
            received.CopyTo(tail.AsSpan(keep));
            tailLength = keep + received.Length;
        }

        return tailLength == payload.Length && tail.AsSpan().SequenceEqual(payload);
    }

    internal static int ExitCodeOf(ConnectFailedException e) =>
        e.IsResolutionFailure ? ExitCodes.HostNotFound : ExitCodeOf(e.SocketError);

    internal static int ExitCodeOf(SocketError error) => error switch
    {
        SocketError.ConnectionRefused => ExitCodes.ConnectionRefused,
        SocketError.TimedOut => ExitCodes.TimedOut,
        SocketError.ConnectionReset or SocketError.Shutdown or SocketError.ConnectionAborted => ExitCodes.ConnectionReset,
        SocketError.HostNotFound or SocketError.TryAgain or SocketError.NoData => ExitCodes.HostNotFound,
        _ => ExitCodes.Error,
    };
}

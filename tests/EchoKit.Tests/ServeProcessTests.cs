using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>
/// The real <c>echokit serve</c> process, one file per behaviour: ServeProcessTests.Output.cs, .Polling.cs,
/// .Shutdown.cs, .Binding.cs; here bad arguments, --help and the helpers other tests share.
/// </summary>
public sealed partial class ServeProcessTests
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);

    [Theory]
    [InlineData("-4 and -6 cannot be combined", "serve", "-4", "-6")]
    [InlineData("-4 and -6 cannot be combined", "connect", "::1", "-4", "-6")]
    [InlineData("invalid --port value '-1'", "serve", "--port", "-1")]
    [InlineData("invalid --port value '65536'", "serve", "--port", "65536")]
    [InlineData("invalid --port value 'http'", "serve", "--port", "http")]
    [InlineData("invalid --shutdown-timeout value: '-1s' is negative", "serve", "--shutdown-timeout", "-1s")]
    [InlineData("invalid --shutdown-timeout value: 'soon' is not a duration", "serve", "--shutdown-timeout", "soon")]
    [InlineData("invalid --bind value 'not an address'", "serve", "--bind", "not an address")]
    [InlineData("unknown option '--frobnicate' for 'echokit serve'", "serve", "--frobnicate")]
    [InlineData("'nope' for option '--engine'", "serve", "--engine", "nope")]
    [InlineData("Did you mean one of the following? Auto, Epoll, Socket", "bench", "127.0.0.1:9", "--engine", "banana")]
    [InlineData("invalid --log-level value 'loud': expected one of Trace, Debug, Information, Warning, Error, Critical, None", "serve", "--log-level", "loud")]
    [InlineData("unknown option '-v' for 'echokit connect' (echokit always reports", "connect", "-v", "127.0.0.1")]
    [InlineData("unknown option '-l' for 'echokit connect' (nc's listen mode is 'echokit serve --port N')", "connect", "-l", "9999")]
    [InlineData("unknown option '--frob' for 'echokit bench'", "bench", "--frob", "127.0.0.1")]
    [InlineData("unknown option '-x' for 'echokit serve'", "serve", "-q", "-x")]
    [InlineData("unknown command 'serv'; did you mean 'serve'?", "serv")]
    [InlineData("invalid --unix value: the path is 125 bytes, and a Unix socket path holds at most 107", "serve", "--unix", "/tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")]
    [InlineData("invalid --unix value: the path is 125 bytes, and a Unix socket path holds at most 107", "connect", "--unix", "/tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")]
    [InlineData("invalid --unix value: the path is 125 bytes, and a Unix socket path holds at most 107", "bench", "--unix", "/tmp/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")]
    [InlineData("unknown command 'conect'; did you mean 'connect'?", "conect", "127.0.0.1")]
    [InlineData("invalid --busy-poll value: '20ms' is too long (at most 10ms", "serve", "--busy-poll", "20ms")]
    [InlineData("invalid --busy-poll value: 'fast' is not a duration", "serve", "--busy-poll", "fast")]
    [InlineData("invalid --log-format value 'xml': expected text or json", "serve", "--log-format", "xml")]
    [InlineData("missing HOST (or --unix PATH)", "connect")]
    [InlineData("invalid port '0'", "connect", "127.0.0.1", "0")]
    [InlineData("invalid port 'x'", "connect", "127.0.0.1:x")]
    [InlineData("port given twice", "connect", "127.0.0.1:80", "81")]
    [InlineData("invalid --send value: unknown escape \\q", "connect", "127.0.0.1", "--send", "a\\qb")]
    [InlineData("invalid --send value: \\x must be followed by two hex digits", "connect", "127.0.0.1", "--send", "\\xZZ")]
    [InlineData("invalid --expect value '0'", "connect", "127.0.0.1", "--send", "a", "--expect", "0")]
    [InlineData("invalid --wait value: '0' must be greater than zero", "connect", "127.0.0.1", "--send", "a", "--wait", "0")]
    [InlineData("invalid --connect-timeout value: '1 minute' is not a duration", "connect", "127.0.0.1", "--connect-timeout", "1 minute")]
    [InlineData("Required command was not provided", new string[0])]
    public Task Each_bad_argument_is_one_line_on_stderr_and_exit_2(string expected, params string[] args) =>
        AssertUsageErrorAsync(expected, args);

    /// <summary>A bad command line: exit 2, nothing on stdout, one line on stderr that names the problem and --help.</summary>
    internal static async Task AssertUsageErrorAsync(string expected, params string[] args)
    {
        var result = await ChildProcess.RunAsync(ExitDeadline, null, args);
        Assert.Equal(2, result.ExitCode);
        string line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("echokit: ", line, StringComparison.Ordinal);
        Assert.Contains(expected, line, StringComparison.Ordinal);
        Assert.Contains("--help", line, StringComparison.Ordinal);
        Assert.Empty(result.Stdout);
    }

    [Fact]
    public async Task Help_lists_every_flag_with_its_default()
    {
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--help");
        Assert.Equal(0, result.ExitCode);
        foreach (var text in new[] { "--port", "[default: 8888]", "--bind", "--no-greeting", "--quiet", "--shutdown-timeout", "[default: 5s]" })
        {
            Assert.Contains(text, result.StdoutText, StringComparison.Ordinal);
        }

        var connect = await ChildProcess.RunAsync(ExitDeadline, null, "connect", "--help");
        foreach (var text in new[] { "--send", "--expect", "--wait", "[default: 2s]", "--connect-timeout", "[default: 10s]", "--recv-timeout", "--send-timeout" })
        {
            Assert.Contains(text, connect.StdoutText, StringComparison.Ordinal);
        }
    }

    internal static void NoStackTrace(string stderr)
    {
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", stderr, StringComparison.Ordinal);
    }

    internal static byte[] RandomBytes(int length)
    {
        var bytes = new byte[length];
        Random.Shared.NextBytes(bytes);
        return bytes;
    }
}

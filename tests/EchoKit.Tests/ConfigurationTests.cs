using System.Text;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>serve's settings from --config FILE and ECHOKIT_* under the command line, and --print-config.</summary>
public sealed class ConfigurationTests : IDisposable
{
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(20);
    private readonly string _directory = Directory.CreateTempSubdirectory("echokit-config-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private string Write(string name, string text)
    {
        string path = Path.Combine(_directory, name);
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>echokit with some ECHOKIT_* variables set (through env(1): the test runner's own never reach it).</summary>
    private static Task<ChildProcess.Result> RunWithEnvironmentAsync(string[] variables, params string[] args) =>
        ChildProcess.RunProgramAsync("env", ExitDeadline, null, [.. variables, .. ChildProcess.Echokit(args)]);

    private static Dictionary<string, List<(string Value, string Source)>> Settings(string printed)
    {
        var settings = new Dictionary<string, List<(string, string)>>();
        foreach (string line in printed.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith('#')))
        {
            int hash = line.LastIndexOf(" # ", StringComparison.Ordinal);
            string[] pair = line[..hash].Split(" = ", 2);
            settings.TryAdd(pair[0].Trim(), []);
            settings[pair[0].Trim()].Add((pair[1].Trim(), line[(hash + 3)..]));
        }

        return settings;
    }

    [Fact]
    public async Task Print_config_says_where_each_value_came_from_and_the_higher_level_wins()
    {
        string file = Write("echokit.conf", """
            # a lab server
            port = 9999
            max-connections = 50   # replaced by the environment
            idle-timeout = 30s
            allow = 10.0.0.0/8
              allow = "192.168.0.0/16"
            quiet = yes
            """);
        var result = await RunWithEnvironmentAsync(["ECHOKIT_MAX_CONNECTIONS=70", "ECHOKIT_DENY=10.1.0.0/16, 10.2.0.0/16", "ECHOKIT_NOT_A_SETTING=1"],
            "serve", "--config", file, "--print-config", "--idle-timeout", "40s");

        Assert.True(result.ExitCode == 0, result.Stderr);
        Assert.Equal("echokit: warning: ECHOKIT_NOT_A_SETTING is not a setting of serve; ignored", result.Stderr.Trim()); // a typo is named, not fatal
        var settings = Settings(result.StdoutText);
        Assert.Equal([("9999", $"{file}:2")], settings["port"]);
        Assert.Equal([("70", "ECHOKIT_MAX_CONNECTIONS")], settings["max-connections"]);
        Assert.Equal([("40s", "command line (--idle-timeout)")], settings["idle-timeout"]);
        Assert.Equal([("10.0.0.0/8", $"{file}:5"), ("192.168.0.0/16", $"{file}:6")], settings["allow"]);
        Assert.Equal([("10.1.0.0/16", "ECHOKIT_DENY"), ("10.2.0.0/16", "ECHOKIT_DENY")], settings["deny"]);
        Assert.Equal([("yes", $"{file}:7")], settings["quiet"]);
        Assert.Equal([("60s", "default")], settings["send-timeout"]);
        Assert.Equal([("auto", "default")], settings["engine"]);
        Assert.Contains("# tls-cert: not set", result.StdoutText, StringComparison.Ordinal);

        // A list on the command line replaces the file's, as any other value does.
        var flagged = await RunWithEnvironmentAsync([], "serve", "--config", file, "--print-config", "--allow", "127.0.0.0/8");
        Assert.Equal([("127.0.0.0/8", "command line (--allow)")], Settings(flagged.StdoutText)["allow"]);
    }

    [Fact]
    public async Task What_print_config_writes_reads_back_as_the_same_settings()
    {
        string file = Write("first.conf", "max-connections = 5\nallow-file = \"/etc/a # b\"\nlog-format = json\n");
        var first = await RunWithEnvironmentAsync(["ECHOKIT_SHUTDOWN_TIMEOUT=2s"], "serve", "--config", file, "--print-config", "--udp");
        Assert.True(first.ExitCode == 0, first.Stderr);

        string again = Write("again.conf", first.StdoutText);
        var second = await RunWithEnvironmentAsync([], "serve", "--config", again, "--print-config");
        Assert.True(second.ExitCode == 0, second.Stderr);

        var before = Settings(first.StdoutText);
        var after = Settings(second.StdoutText);
        Assert.Equal(before.Keys.Order(), after.Keys.Order());
        foreach (var (key, values) in before)
        {
            Assert.Equal(values.Select(v => v.Value), after[key].Select(v => v.Value));
        }

        Assert.Equal([("\"/etc/a # b\"", $"{again}:{Array.FindIndex(first.StdoutText.Split('\n'), l => l.StartsWith("allow-file", StringComparison.Ordinal)) + 1}")], after["allow-file"]);
    }

    [Fact]
    public async Task A_server_runs_with_the_settings_of_its_file_and_environment()
    {
        string file = Write("serve.conf", "max-connections = 1\nno-greeting = true\nport = 1\n");
        string[] command = ChildProcess.Echokit("serve", "--config", file, "--port", "0", "--quiet");
        await using var server = ChildProcess.StartProgram("env", ["ECHOKIT_BIND=127.0.0.1", .. command]);
        string listening = await server.WaitForStderrAsync("listening on", ExitDeadline);
        Assert.Contains("listening on 127.0.0.1:", listening, StringComparison.Ordinal);
        int port = ChildProcess.PortOf(listening);

        using var first = await ConnectAsync(port);
        await first.SendAsync("ping"u8.ToArray());
        Assert.Equal("ping", Encoding.ASCII.GetString(await ReceiveExactlyAsync(first, 4))); // no greeting: the echo first

        using var second = await ConnectAsync(port);
        Assert.Equal("server busy: 1 connections\n", Encoding.ASCII.GetString(await ReceiveToEndAsync(second)));
    }

    [Theory]
    [InlineData("max-conections = 5\n", ":1:1: unknown key 'max-conections'; did you mean 'max-connections'?")]
    [InlineData("\n  max-connections = ten\n", ":2:21: max-connections: invalid --max-connections value 'ten': not a whole number")]
    [InlineData("port = 1\nport = 2\n", ":2:1: port is given twice (first on")]
    [InlineData("quiet\n", ":1:1: expected 'key = value', found 'quiet'")]
    [InlineData("quiet = maybe\n", ":1:9: quiet: invalid value 'maybe': expected true or false")]
    [InlineData("engine = fast\n", ":1:10: engine: invalid value 'fast': expected one of auto, epoll, socket")]
    [InlineData("bind = \"127.0.0.1\n", ":1:8: bind: the quoted value has no closing '\"'")]
    [InlineData("port =\n", ":1:7: port: no value after '='")]
    [InlineData("--port = 1\n", ":1:1: write the key without dashes: 'port = …'")]
    [InlineData("config = other.conf\n", ":1:1: config: not a setting a file can hold")]
    [InlineData("tag = \x1b[2J\n", ":1:7: tag: invalid value '\\x1b[2J': expected true or false")]
    [InlineData("bind = a\u0007b\n", ":1:8: bind: invalid value 'a\\x07b': control characters")]
    public async Task A_bad_file_is_one_line_with_file_line_column_key_and_why(string text, string expected)
    {
        string file = Write("bad.conf", text);
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--config", file);
        Assert.Equal(2, result.ExitCode);
        Assert.Empty(result.Stdout);
        string line = Assert.Single(result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"echokit: {file}:", line, StringComparison.Ordinal);
        Assert.Contains(expected, line, StringComparison.Ordinal);
        Assert.DoesNotContain("\x1b", line, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("/dev/zero", "larger than 16 MiB: not a file of settings")]
    [InlineData("/tmp", "Is a directory (EISDIR)")]
    [InlineData("/nonexistent/echokit.conf", "No such file or directory (ENOENT)")]
    public async Task A_file_that_cannot_be_read_is_one_line(string path, string why)
    {
        var result = await ChildProcess.RunAsync(ExitDeadline, null, "serve", "--config", path);
        Assert.Equal(2, result.ExitCode);
        Assert.Equal($"echokit: --config {path}: cannot read it: {why}", result.Stderr);
    }

    [Theory]
    [InlineData(">/dev/full", "echokit: --print-config: cannot write to stdout: No space left on device (ENOSPC)")]
    [InlineData(">&-", "echokit: --print-config: stdout is closed")]
    public async Task Print_config_to_a_stdout_that_cannot_take_it_is_one_line_and_exit_1(string redirection, string expected)
    {
        await using var process = ChildProcess.StartWithRedirections(redirection, "serve", "--print-config");
        Assert.Equal(1, await process.WaitForExitAsync(ExitDeadline));
        Assert.Equal(expected, process.StandardErrorText.Trim());
    }

    [Fact]
    public async Task A_bad_environment_value_names_the_variable()
    {
        var result = await RunWithEnvironmentAsync(["ECHOKIT_PORT=70000"], "serve");
        Assert.Equal(2, result.ExitCode);
        Assert.Equal("echokit: ECHOKIT_PORT=70000: invalid --port value '70000': out of range (expected 0 to 65535)", result.Stderr);

        var flagWins = await RunWithEnvironmentAsync(["ECHOKIT_PORT=70000"], "serve", "--port", "1", "--print-config");
        Assert.Equal(2, flagWins.ExitCode); // a bad value is an error wherever it is, even where a higher level replaces it
    }

    [Theory]
    [InlineData("epoll")]
    [InlineData("socket")]
    public async Task SIGHUP_applies_limits_timeouts_and_rules_to_a_running_server_and_names_what_needs_a_restart(string engine)
    {
        string file = Write("reload.conf", "max-connections = 1\nno-greeting = true\nbind = 127.0.0.1\n");
        var (server, port) = await ChildProcess.StartServerAsync("--config", file, "--quiet", "--engine", engine);
        await using var _ = server;

        using var held = await ConnectAsync(port);
        await held.SendAsync("a"u8.ToArray());
        Assert.Equal("a", Encoding.ASCII.GetString(await ReceiveExactlyAsync(held, 1)));
        using (var busy = await ConnectAsync(port))
        {
            Assert.Equal("server busy: 1 connections\n", Encoding.ASCII.GetString(await ReceiveToEndAsync(busy)));
        }

        File.WriteAllText(file, "max-connections = 2\nno-greeting = true\nbind = 127.0.0.1\nidle-timeout = 1s\ndeny = 127.0.0.2/32\ntag = true\n");
        server.Signal(1); // SIGHUP
        string reloaded = await server.WaitForStderrAsync("SIGHUP: configuration reloaded", Deadline);
        Assert.Contains("max-connections 1 -> 2; idle-timeout 300s -> 1s; deny (not set) -> 127.0.0.2/32", reloaded, StringComparison.Ordinal);
        Assert.Contains("SIGHUP: tag changed (false -> true) but needs a restart: the old value stays", server.StandardErrorText, StringComparison.Ordinal);

        // The new limit: a second connection beside the held one is served.
        using (var second = await ConnectAsync(port))
        {
            await second.SendAsync("b"u8.ToArray());
            Assert.Equal("b", Encoding.ASCII.GetString(await ReceiveExactlyAsync(second, 1)));
        }

        // The new rule: refused before any byte.
        using (var denied = await ConnectFromAsync("127.0.0.2", port))
        {
            Assert.Empty(await ReceiveToEndAsync(denied));
        }

        // The new idle timeout reaches the connection that was open before the reload.
        Assert.Empty(await ReceiveToEndAsync(held));
        await server.WaitForStderrAsync("idle", Deadline);

        // A file that no longer reads changes nothing, and says where it is wrong.
        File.WriteAllText(file, "max-connections = 2\nidle-timeout = soon\n");
        server.Signal(1);
        string refused = await server.WaitForStderrAsync("SIGHUP: configuration not reloaded", Deadline);
        Assert.Contains($"{file}:2:16: idle-timeout:", refused, StringComparison.Ordinal);
        using var after = await ConnectAsync(port);
        await after.SendAsync("c"u8.ToArray());
        Assert.Equal("c", Encoding.ASCII.GetString(await ReceiveExactlyAsync(after, 1)));

        server.Signal(ChildProcess.SIGTERM);
        Assert.Equal(0, await server.WaitForExitAsync(ExitDeadline));
    }
}

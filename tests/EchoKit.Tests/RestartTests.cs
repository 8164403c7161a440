using System.Text.Json;
using EchoKit.Tests.Infrastructure;

namespace EchoKit.Tests;

/// <summary>
/// The zero-downtime restart of <c>serve --reuse-port</c>: a new process binds beside the old one, the old one
/// gets SIGTERM, and a client opening connections all the while sees no refused connection and no lost byte.
/// Run in a network namespace of its own (unshare --net, loopback up) so that it can turn on
/// net.ipv4.tcp_migrate_req, which moves connections queued on a closing listener to the rest of the group,
/// without touching the host's settings.
/// </summary>
[Collection(nameof(ReliabilityTests))] // counts every failed cycle: run alone, not beside the suite's floods
public sealed class RestartTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("echokit-restart-");

    public void Dispose() => _dir.Delete(recursive: true);

    [Fact]
    public async Task A_restart_with_reuse_port_refuses_no_connection_and_loses_no_byte()
    {
        Assert.SkipUnless(Environment.UserName == "root" && File.Exists("/usr/bin/unshare"), "a network namespace of its own needs root (unshare --net)");
        var probe = await ChildProcess.RunProgramAsync("unshare", TimeSpan.FromSeconds(10), null, "--net", "true");
        Assert.SkipWhen(probe.ExitCode != 0, $"unshare --net is not allowed here: {probe.Stderr.Trim()}");
        string echokit = ChildProcess.EchokitForShell();
        string d = _dir.FullName;
        string script = $$"""
            set -u
            ip link set lo up
            sysctl -qw net.ipv4.tcp_migrate_req=1
            E="{{echokit}}"
            wait_for() { for _ in $(seq 400); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done; echo "timed out waiting for '$2' in $1"; cat "$1"; exit 1; }
            eval "exec $E serve --port 18000 --reuse-port --quiet --no-greeting" 2>{{d}}/old.err &
            old=$!
            wait_for {{d}}/old.err "ready: serving"
            eval "exec $E bench 127.0.0.1:18000 --reconnect -c 20 -s 256 -t 3s --warmup 0 --skip-greeting 0 --json" >{{d}}/bench.json 2>{{d}}/bench.err &
            bench=$!
            wait_for {{d}}/bench.err "t=1s"
            eval "exec $E serve --port 18000 --reuse-port --quiet --no-greeting" 2>{{d}}/new.err &
            new=$!
            wait_for {{d}}/new.err "ready: serving"
            kill -TERM $old
            wait $old; echo "old_rc=$?"
            wait $bench; echo "bench_rc=$?"
            kill -TERM $new
            wait $new; echo "new_rc=$?"
            """;
        var result = await ChildProcess.RunProgramAsync("unshare", TimeSpan.FromSeconds(60), null, "--net", "bash", "-c", script);
        string report = $"{result.StdoutText}\n{result.Stderr}\nold: {Read("old.err")}\nnew: {Read("new.err")}\nbench: {Read("bench.err")}";
        Assert.True(result.StdoutText.Contains("old_rc=0", StringComparison.Ordinal) && result.StdoutText.Contains("bench_rc=0", StringComparison.Ordinal), report);
        using var json = JsonDocument.Parse(Read("bench.json"));
        Assert.True(json.RootElement.GetProperty("msgs").GetInt64() > 100, report);
        Assert.Equal(0, json.RootElement.GetProperty("errors").GetInt64());
        Assert.Equal(0, json.RootElement.GetProperty("mismatches").GetInt64());
        Assert.Contains("closed: closed by peer", Read("new.err"), StringComparison.Ordinal); // the new process took over
        Assert.DoesNotContain("aborting", Read("old.err"), StringComparison.Ordinal);
    }

    private string Read(string name) => File.Exists(Path.Combine(_dir.FullName, name)) ? File.ReadAllText(Path.Combine(_dir.FullName, name)) : "";
}

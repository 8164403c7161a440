using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;

namespace EchoKit.Tests.Infrastructure;

/// <summary>
/// A child process (the real <c>echokit</c> program, or nc, socat, a web server): stdin writable, stdout captured as bytes,
/// stderr captured as lines that tests can wait for. Every wait has a deadline; Dispose kills
/// what is still running (our own child, by PID).
/// </summary>
public sealed partial class ChildProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly MemoryStream _stdout = new();
    private readonly List<string> _stderr = [];
    private readonly Task _stdoutPump;
    private readonly Task _stderrPump;
    private readonly object _gate = new();
    private readonly TaskCompletionSource _stdoutGate = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _stderrGate = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TaskCompletionSource _stdoutChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private TaskCompletionSource _stderrChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private ChildProcess(Process process, bool stdoutPaused = false, bool stderrPaused = false)
    {
        _process = process;
        if (!stdoutPaused)
        {
            _stdoutGate.SetResult();
        }

        if (!stderrPaused)
        {
            _stderrGate.SetResult();
        }

        _stdoutPump = PumpStdoutAsync();
        _stderrPump = PumpStderrAsync();
    }

    public static string CliPath { get; } = Path.Combine(AppContext.BaseDirectory, "echokit.dll");

    /// <summary>
    /// The command line that runs <c>echokit ARGS</c>: the built echokit.dll on the dotnet host, or, when
    /// ECHOKIT_CLI names an executable (a published build, e.g. Native AOT), that executable.
    /// </summary>
    public static string[] Echokit(params string[] args)
    {
        // A test that forces the epoll engine is skipped, not failed, where that engine cannot run.
        for (int i = 0; i + 1 < args.Length; i++)
        {
            if (args[i] == "--engine" && args[i + 1].Equals("epoll", StringComparison.OrdinalIgnoreCase))
            {
                Assert.SkipUnless(EchoServer.EpollSupported, "the epoll engine runs on Linux x86-64 only");
            }
        }

        return Environment.GetEnvironmentVariable("ECHOKIT_CLI") is { Length: > 0 } cli ? [cli, .. args] : [DotnetHost, CliPath, .. args];
    }

    /// <summary><see cref="Echokit"/> as one line for a bash script, each word single-quoted.</summary>
    public static string EchokitForShell() =>
        string.Join(' ', Echokit().Select(word => "'" + word.Replace("'", "'\\''", StringComparison.Ordinal) + "'"));

    public int Pid => _process.Id;

    public Stream StandardInput => _process.StandardInput.BaseStream;

    /// <summary>Starts <c>echokit ARGS</c>.</summary>
    public static ChildProcess Start(params string[] args)
    {
        string[] command = Echokit(args);
        return StartProgram(command[0], command[1..]);
    }

    /// <summary>
    /// Starts <c>echokit ARGS</c> through bash with <paramref name="redirections"/> applied to it, e.g. <c>&gt;&amp;-</c>
    /// (stdout closed), <c>2&gt;&amp;-</c>, <c>&lt;&amp;-</c>, or <c>&gt; &gt;(head -c 1 &gt;/dev/null)</c> (a pipe whose reader goes away).
    /// bash execs echokit, so <see cref="Pid"/> is echokit's.
    /// </summary>
    public static ChildProcess StartWithRedirections(string redirections, params string[] args) =>
        StartProgram("bash", ["-c", $"exec \"$@\" {redirections}", "echokit", .. Echokit(args)]);

    /// <summary>Starts any program (nc, socat, python3 ...) by name or path.</summary>
    public static ChildProcess StartProgram(string file, params string[] args) => StartProgram(file, stdoutPaused: false, args);

    /// <summary>
    /// Starts a program; with <paramref name="stdoutPaused"/> nobody reads its stdout (a full pipe,
    /// as with a slow terminal) until <see cref="ResumeStdout"/>.
    /// </summary>
    public static ChildProcess StartProgram(string file, bool stdoutPaused, params string[] args) =>
        StartProgram(file, stdoutPaused, stderrPaused: false, args);

    /// <summary>As above; with <paramref name="stderrPaused"/> nobody reads its stderr until <see cref="ResumeStderr"/>.</summary>
    public static ChildProcess StartProgram(string file, bool stdoutPaused, bool stderrPaused, params string[] args)
    {
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        // echokit serve reads ECHOKIT_* settings: a test gives its own (through env), none leak from the runner's.
        foreach (string name in info.Environment.Keys.Where(k => k.StartsWith("ECHOKIT_", StringComparison.Ordinal)).ToList())
        {
            info.Environment.Remove(name);
        }

        Process process;
        try
        {
            process = Process.Start(info) ?? throw new InvalidOperationException($"could not start {file}");
        }
        catch (System.ComponentModel.Win32Exception e) when (!file.Contains('/', StringComparison.Ordinal))
        {
            // A third-party peer that is not installed: say which package brings it (.ci/run installs them).
            string package = file switch { "nc" => "netcat-openbsd", "setpriv" => "util-linux", "ss" => "iproute2", _ => file };
            throw new InvalidOperationException($"{file} is not installed (apt-get install {package}; .ci/run installs it): {e.Message}", e);
        }

        return new ChildProcess(process, stdoutPaused, stderrPaused);
    }

    /// <summary>Runs echokit to completion with <paramref name="stdin"/> as its input (then EOF).</summary>
    public static Task<Result> RunAsync(TimeSpan deadline, byte[]? stdin, params string[] args)
    {
        string[] command = Echokit(args);
        return RunProgramAsync(command[0], deadline, stdin, command[1..]);
    }

    /// <summary>Runs a program to completion with <paramref name="stdin"/> as its input (then EOF).</summary>
    public static async Task<Result> RunProgramAsync(string file, TimeSpan deadline, byte[]? stdin, params string[] args)
    {
        await using var process = StartProgram(file, args);
        if (stdin is not null)
        {
            await process.StandardInput.WriteAsync(stdin);
        }

        process.StandardInput.Close();
        int exitCode = await process.WaitForExitAsync(deadline);
        return new Result(exitCode, process.StandardOutputBytes, process.StandardErrorText);
    }

    public sealed record Result(int ExitCode, byte[] Stdout, string Stderr)
    {
        public string StdoutText => Encoding.UTF8.GetString(Stdout);

        public override string ToString() => $"exit {ExitCode}; stderr:\n{Stderr}";
    }

    private static string DotnetHost =>
        Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host && File.Exists(host) ? host : "dotnet";

    public byte[] StandardOutputBytes
    {
        get
        {
            lock (_stdout)
            {
                return _stdout.ToArray();
            }
        }
    }

    public string StandardErrorText
    {
        get
        {
            lock (_gate)
            {
                return string.Join('\n', _stderr);
            }
        }
    }

    private async Task PumpStdoutAsync()
    {
        await _stdoutGate.Task;
        var buffer = new byte[64 * 1024];
        var stream = _process.StandardOutput.BaseStream;
        int n;
        while ((n = await stream.ReadAsync(buffer)) > 0)
        {
            TaskCompletionSource changed;
            lock (_stdout)
            {
                _stdout.Write(buffer, 0, n);
                changed = _stdoutChanged;
                _stdoutChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            changed.TrySetResult();
        }

        lock (_stdout)
        {
            _stdoutChanged.TrySetResult();
        }
    }

    /// <summary>Starts reading stderr of a process started with stderr paused.</summary>
    public void ResumeStderr() => _stderrGate.TrySetResult();

    private async Task PumpStderrAsync()
    {
        await _stderrGate.Task;
        string? line;
        while ((line = await _process.StandardError.ReadLineAsync()) is not null)
        {
            TaskCompletionSource changed;
            lock (_gate)
            {
                _stderr.Add(line);
                changed = _stderrChanged;
                _stderrChanged = new(TaskCreationOptions.RunContinuationsAsynchronously);
            }

            changed.TrySetResult();
        }

        lock (_gate)
        {
            _stderrChanged.TrySetResult();
        }
    }

    /// <summary>Starts reading stdout of a process started with stdout paused.</summary>
    public void ResumeStdout() => _stdoutGate.TrySetResult();

    /// <summary>Waits until stdout holds at least <paramref name="count"/> bytes; returns them all.</summary>
    public async Task<byte[]> WaitForStdoutAsync(int count, TimeSpan deadline)
    {
        var until = DateTime.UtcNow + deadline;
        while (true)
        {
            Task changed;
            lock (_stdout)
            {
                if (_stdout.Length >= count)
                {
                    return _stdout.ToArray();
                }

                changed = _stdoutChanged.Task;
            }

            var left = until - DateTime.UtcNow;
            if (left <= TimeSpan.Zero || _stdoutPump.IsCompleted)
            {
                throw new TimeoutException($"stdout never reached {count} bytes within {deadline}; it has {StandardOutputBytes.Length}; stderr:\n{StandardErrorText}");
            }

            await Task.WhenAny(changed, Task.Delay(left));
        }
    }

    /// <summary>Waits until a stderr line contains <paramref name="text"/>; returns that line.</summary>
    public async Task<string> WaitForStderrAsync(string text, TimeSpan deadline)
    {
        var until = DateTime.UtcNow + deadline;
        while (true)
        {
            Task changed;
            lock (_gate)
            {
                var found = _stderr.FirstOrDefault(l => l.Contains(text, StringComparison.Ordinal));
                if (found is not null)
                {
                    return found;
                }

                changed = _stderrChanged.Task;
            }

            var left = until - DateTime.UtcNow;
            if (left <= TimeSpan.Zero || _stderrPump.IsCompleted)
            {
                throw new TimeoutException($"stderr never contained '{text}' within {deadline}; it has:\n{StandardErrorText}");
            }

            await Task.WhenAny(changed, Task.Delay(left));
        }
    }

    /// <summary>Starts <c>echokit serve</c> on an OS-chosen port and waits for its listening line.</summary>
    public static Task<(ChildProcess Process, int Port)> StartServerAsync(params string[] extraArgs) =>
        StartServerAsync(stdoutPaused: false, extraArgs);

    public static async Task<(ChildProcess Process, int Port)> StartServerAsync(bool stdoutPaused, params string[] extraArgs)
    {
        string[] command = Echokit(["serve", "--port", "0", .. extraArgs]);
        var process = StartProgram(command[0], stdoutPaused, command[1..]);
        try
        {
            string line = await process.WaitForStderrAsync("listening on", TimeSpan.FromSeconds(20));
            if (line.Contains("(Prometheus metrics)", StringComparison.Ordinal))
            {
                // --metrics listens first; the echo port's line follows, before "ready: serving".
                await process.WaitForStderrAsync("ready: serving", TimeSpan.FromSeconds(20));
                line = process.StandardErrorText.Split('\n').First(l => l.Contains("listening on", StringComparison.Ordinal) && !l.Contains("(Prometheus metrics)", StringComparison.Ordinal));
            }

            return (process, PortOf(line));
        }
        catch
        {
            await process.DisposeAsync();
            throw;
        }
    }

    /// <summary>The port of a "listening on ADDRESS:PORT" line.</summary>
    public static int PortOf(string listeningLine) =>
        int.Parse(PortPattern().Match(listeningLine).Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);

    [System.Text.RegularExpressions.GeneratedRegex(@"listening on .*:(\d+)")]
    private static partial System.Text.RegularExpressions.Regex PortPattern();

    public void Signal(int signal)
    {
        if (Kill(_process.Id, signal) != 0)
        {
            throw new InvalidOperationException($"kill({_process.Id}, {signal}) failed: errno {Marshal.GetLastPInvokeError()}");
        }
    }

    public const int SIGINT = 2;
    public const int SIGTERM = 15;

    public const int SIGKILL = 9;

    /// <summary>Waits for exit; returns the exit code or throws if the deadline passes.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan deadline)
    {
        using var cts = new CancellationTokenSource(deadline);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"child process (pid {_process.Id}) did not exit within {deadline}; stderr:\n{StandardErrorText}");
        }

        // The process is gone: what it left in a paused pipe can be read now.
        ResumeStdout();
        ResumeStderr();
        await Task.WhenAll(_stdoutPump, _stderrPump).WaitAsync(TimeSpan.FromSeconds(10));
        return _process.ExitCode;
    }

    public bool HasExited => _process.HasExited;

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
        }

        _process.Dispose();
    }

    [DllImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static extern int Kill(int pid, int signal);
}

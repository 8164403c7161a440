using System.Runtime.InteropServices;
using System.Text;

namespace EchoKit.Cli;

/// <summary>
/// The first check of Main: a descriptor limit so low that the runtime itself would fail while loading the
/// rest of the program (an unhandled FileNotFoundException for an assembly, or "Out of memory.") is one
/// clear line and an exit code instead. It uses nothing that needs another assembly or file: getrlimit,
/// /proc/self/fd and write(2). The server's own, exact check comes later (EchoServer, before it listens).
/// Below about 25 descriptors the .NET host cannot start at all, before any of our code runs.
/// </summary>
internal static class StartupLimits
{
    /// <summary>Descriptors the rest of the start may still open (assemblies, the event loops, the logger), beyond those open now.</summary>
    private const int Headroom = 96;

    private const int RlimitNofile = 7;

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [DllImport("libc", EntryPoint = "getrlimit")]
    private static extern int GetRLimit(int resource, out RLimit limit);

    [DllImport("libc", EntryPoint = "setrlimit")]
    private static extern int SetRLimit(int resource, in RLimit limit);

    [DllImport("libc", EntryPoint = "write")]
    private static extern nint Write(int fd, byte[] buffer, nint count);

    /// <summary>Raises the soft limit to the hard one; null when that leaves enough, else the line to print.</summary>
    public static string? Check()
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        try
        {
            if (GetRLimit(RlimitNofile, out var limit) != 0)
            {
                return null;
            }

            if (limit.Current < limit.Maximum)
            {
                var raised = new RLimit { Current = limit.Maximum, Maximum = limit.Maximum };
                if (SetRLimit(RlimitNofile, raised) == 0)
                {
                    limit = raised;
                }
            }

            int open;
            try
            {
                open = Directory.GetFileSystemEntries("/proc/self/fd").Length;
            }
            catch (IOException) when (limit.Current < Headroom)
            {
                return $"echokit: the descriptor limit (ulimit -n) is {limit.Current}, too low to start: no descriptor is left to open; raise it (ulimit -n 1024, LimitNOFILE=)\n";
            }

            return limit.Current >= (ulong)(open + Headroom)
                ? null
                : $"echokit: the descriptor limit (ulimit -n) is {limit.Current}, too low to start: {open} are open already and about {Headroom} more are needed; raise it (ulimit -n 1024, LimitNOFILE=)\n";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or IOException or UnauthorizedAccessException)
        {
            return null; // cannot tell: let the start find out
        }
    }

    /// <summary>Writes <paramref name="line"/> to descriptor 2 directly (Console would load more of the runtime).</summary>
    public static void WriteError(string line)
    {
        var bytes = Encoding.UTF8.GetBytes(line);
        Write(2, bytes, bytes.Length);
    }
}

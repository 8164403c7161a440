using System.Runtime.InteropServices;

namespace EchoKit.Internal;

/// <summary>
/// How many connections this process can hold without running out of file descriptors.
///
/// Like Go's runtime, the soft RLIMIT_NOFILE is first raised to the hard limit. Like HAProxy's
/// maxconn derived from ulimit-n, the server then never accepts past the limit minus a reserve:
/// the runtime itself needs descriptors now and then (it opens assemblies lazily, for one), and
/// when a .NET process hits EMFILE there it aborts ("Out of memory."). Connections past the
/// budget are still accepted, answered "server busy" and closed, so clients learn why.
/// </summary>
internal static class DescriptorBudget
{
    /// <summary>Descriptors kept free for the runtime, logging and the busy answer itself.</summary>
    public const int Reserve = 48;

    private const int RlimitNofile = 7; // Linux, every architecture .NET runs on

    [StructLayout(LayoutKind.Sequential)]
    private struct RLimit
    {
        public ulong Current;
        public ulong Maximum;
    }

    [DllImport("libc", EntryPoint = "getrlimit", SetLastError = true)]
    private static extern int GetRLimit(int resource, out RLimit limit);

    [DllImport("libc", EntryPoint = "setrlimit", SetLastError = true)]
    private static extern int SetRLimit(int resource, in RLimit limit);

    /// <summary>The soft descriptor limit after raising it as far as allowed, or null where unknown (not Linux).</summary>
    public static long? RaiseAndReadLimit()
    {
        if (ReadLimit() is not { } limit)
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

        return Soft(limit);
    }

    /// <summary>The soft descriptor limit in force now, or null where unknown; it may have been lowered since start (prlimit --pid).</summary>
    public static long? CurrentLimit() => ReadLimit() is { } limit ? Soft(limit) : null;

    /// <summary>
    /// True when a new descriptor's number leaves fewer than a third of the reserve (16) free under the
    /// limit in force now; at a full start-time budget 32 are still free (the reserve is opened after the
    /// budget is taken). Linux hands out the lowest free number, so descriptor N means N are already open:
    /// under a running server whose limit was lowered, this sees the edge coming before the runtime meets
    /// EMFILE (it needs descriptors to start a thread: a pipe, /proc/self/task/N/comm).
    /// </summary>
    public static bool NearLimit(int descriptor, out long limit)
    {
        limit = CurrentLimit() ?? long.MaxValue;
        return descriptor >= limit - Reserve / 3;
    }

    private static RLimit? ReadLimit()
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        try
        {
            return GetRLimit(RlimitNofile, out var limit) == 0 ? limit : null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return null;
        }
    }

    private static long Soft(RLimit limit) => limit.Current > int.MaxValue ? int.MaxValue : (long)limit.Current;

    /// <summary>Spare descriptors (/dev/null) held so that they can be handed back to the runtime at EMFILE.</summary>
    public static List<Microsoft.Win32.SafeHandles.SafeFileHandle>? OpenReserve(int count = SpareCount)
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        var handles = new List<Microsoft.Win32.SafeHandles.SafeFileHandle>(count);
        try
        {
            for (int i = 0; i < count; i++)
            {
                handles.Add(File.OpenHandle("/dev/null", FileMode.Open, FileAccess.Read));
            }
        }
        catch (IOException)
        {
            // Fewer spares than hoped; keep what we have.
        }

        return handles;
    }

    /// <summary>Descriptors open in this process right now, or 0 where that cannot be read.</summary>
    public static int OpenNow()
    {
        try
        {
            return Directory.GetFileSystemEntries("/proc/self/fd").Length;
        }
        catch (IOException)
        {
            return 0;
        }
        catch (UnauthorizedAccessException)
        {
            return 0;
        }
    }

    /// <summary>
    /// The fewest descriptors a server with <paramref name="ownDescriptors"/> sockets and event-loop descriptors
    /// can start with and still serve one connection: what is open now, those, the reserve, the spares, and one.
    /// Null when the limit (raised as far as allowed) is enough or unknown; otherwise the limit and what is needed.
    /// Below it the server would start and refuse everyone as busy, or abort when an event loop could not
    /// get its descriptors: it must refuse to start instead, before it says it is listening.
    /// </summary>
    public static (long Limit, long Needed, int OpenNow)? Shortfall(int ownDescriptors)
    {
        if (RaiseAndReadLimit() is not { } limit)
        {
            return null;
        }

        int open = OpenNow();
        long needed = open + ownDescriptors + Reserve + SpareCount + 1;
        return limit >= needed ? null : (limit, needed, open);
    }

    /// <summary>Spare descriptors held for the moment of EMFILE (<see cref="OpenReserve"/>).</summary>
    public const int SpareCount = 16;

    /// <summary>Connections that fit: the limit less what is open and the reserve; null when unlimited or unknown.</summary>
    public static int? Connections(int listeners)
    {
        long? limit = RaiseAndReadLimit();
        if (limit is null)
        {
            return null;
        }

        long budget = limit.Value - OpenNow() - listeners - Reserve;
        return (int)Math.Clamp(budget, 1, int.MaxValue);
    }
}

using System.Globalization;

namespace EchoKit.Tests.Infrastructure;

/// <summary>What /proc says about a process: resident memory, open descriptors and their limit, CPU time.</summary>
public static class ProcStats
{
    /// <summary>VmRSS in bytes.</summary>
    public static long ResidentBytes(int pid)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                var kb = line["VmRSS:".Length..].Trim().Split(' ')[0];
                return long.Parse(kb, CultureInfo.InvariantCulture) * 1024;
            }
        }

        throw new InvalidOperationException($"no VmRSS for pid {pid}");
    }

    public static int OpenDescriptors(int pid) => Directory.GetFileSystemEntries($"/proc/{pid}/fd").Length;

    /// <summary>The soft RLIMIT_NOFILE ("Max open files" in /proc/PID/limits).</summary>
    public static long SoftDescriptorLimit(int pid)
    {
        foreach (var line in File.ReadLines($"/proc/{pid}/limits"))
        {
            if (line.StartsWith("Max open files", StringComparison.Ordinal))
            {
                return long.Parse(line["Max open files".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries)[0], CultureInfo.InvariantCulture);
            }
        }

        throw new InvalidOperationException($"no 'Max open files' for pid {pid}");
    }

    /// <summary>User + system CPU time consumed so far.</summary>
    public static TimeSpan CpuTime(int pid)
    {
        string stat = File.ReadAllText($"/proc/{pid}/stat");
        // Fields after the command name (which is in parentheses and may hold spaces).
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        long ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
        return TimeSpan.FromSeconds(ticks / 100.0); // USER_HZ is 100 on Linux
    }

    /// <summary>Whether every thread of the process is stopped (SIGSTOP delivered: state T in /proc/PID/task/*/stat).</summary>
    public static bool IsStopped(int pid) =>
        Directory.GetDirectories($"/proc/{pid}/task").All(task =>
        {
            try
            {
                string stat = File.ReadAllText(Path.Combine(task, "stat"));
                return stat[stat.LastIndexOf(')') + 2] is 'T' or 't';
            }
            catch (IOException)
            {
                return true; // the thread has gone
            }
        });

    /// <summary>Polls until <paramref name="condition"/> holds, or fails at the deadline with <paramref name="describe"/>.</summary>
    public static async Task WaitUntilAsync(Func<bool> condition, TimeSpan deadline, Func<string> describe)
    {
        var until = DateTime.UtcNow + deadline;
        while (!condition())
        {
            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException($"condition not met within {deadline}: {describe()}");
            }

            await Task.Delay(50);
        }
    }
}

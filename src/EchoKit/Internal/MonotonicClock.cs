using System.Diagnostics;

namespace EchoKit.Internal;

/// <summary>
/// Milliseconds of a monotonic clock, for timeouts. Not <see cref="Environment.TickCount64"/>: on Linux
/// that is CLOCK_MONOTONIC_COARSE, which moves in jiffies (4 ms here), so a connection stamped just
/// before a jiffy and checked just after one could be reaped up to 4 ms before its idle timeout.
/// </summary>
internal static class MonotonicClock
{
    private static readonly long TicksPerMillisecond = Stopwatch.Frequency / 1000; // 1,000,000 on Linux

    public static long Milliseconds => Stopwatch.GetTimestamp() / TicksPerMillisecond;
}

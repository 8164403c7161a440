using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal;

/// <summary>Every log line the server writes, source-generated so that a disabled level costs nothing.</summary>
internal static partial class Log
{
    [LoggerMessage(1, LogLevel.Information, "listening on {EndPoint}")]
    public static partial void Listening(ILogger logger, string endPoint);

    [LoggerMessage(2, LogLevel.Information, "connection {Id} accepted from {Peer}")]
    public static partial void Accepted(ILogger logger, long id, string peer);

    [LoggerMessage(21, LogLevel.Information, "connection {Id}: client {Client} (PROXY header from {Balancer})")]
    public static partial void ClientBehind(ILogger logger, long id, string client, string balancer);

    [LoggerMessage(3, LogLevel.Information, "connection {Id} from {Peer} closed: {Reason}, {BytesIn} bytes in, {BytesOut} bytes out, {DurationMs} ms")]
    public static partial void Closed(ILogger logger, long id, string peer, string reason, long bytesIn, long bytesOut, long durationMs);

    [LoggerMessage(4, LogLevel.Warning, "connection from {Peer} refused: server busy ({Connections})")]
    private static partial void Busy(ILogger logger, string peer, string connections);

    public static void Busy(ILogger logger, string peer, int max) => Busy(logger, peer, Count(max, "connection"));

    [LoggerMessage(5, LogLevel.Warning, "accept failed: {Error}; retrying in {DelayMs} ms ({Suppressed} similar errors not logged)")]
    public static partial void AcceptFailed(ILogger logger, string error, long delayMs, long suppressed);

    [LoggerMessage(6, LogLevel.Information, "shutting down: stopped accepting, draining {Connections} (timeout {TimeoutMs} ms)")]
    private static partial void ShuttingDown(ILogger logger, string connections, long timeoutMs);

    public static void ShuttingDown(ILogger logger, int count, long timeoutMs) => ShuttingDown(logger, Count(count, "connection"), timeoutMs);

    [LoggerMessage(7, LogLevel.Warning, "shutdown timeout: aborting {Connections}")]
    private static partial void AbortingAtShutdown(ILogger logger, string connections);

    public static void AbortingAtShutdown(ILogger logger, int count) => AbortingAtShutdown(logger, Count(count, "connection"));

    /// <summary>"1 connection", "2 connections", "0 connections".</summary>
    public static string Count(long count, string noun) => count == 1 ? $"1 {noun}" : $"{count} {noun}s";

    [LoggerMessage(9, LogLevel.Warning, "the descriptor limit allows {Limit} connections (--max-connections is {Configured}); more get 'server busy'")]
    public static partial void DescriptorLimited(ILogger logger, int limit, string configured);

    [LoggerMessage(10, LogLevel.Error, "connection setup failed: {Error}")]
    public static partial void SetupFailed(ILogger logger, string error);

    [LoggerMessage(14, LogLevel.Critical, "event loop {Index} failed and stopped: {Error}")]
    public static partial void LoopFailed(ILogger logger, int index, string error);

    [LoggerMessage(11, LogLevel.Warning, "{Transport}: datagrams not answered so far: {Drops}")]
    public static partial void DatagramsDropped(ILogger logger, string transport, string drops);

    [LoggerMessage(12, LogLevel.Information, "{Transport}: {Echoed} datagrams echoed, {Drops}")]
    public static partial void DatagramSummary(ILogger logger, string transport, long echoed, string drops);

    [LoggerMessage(15, LogLevel.Warning, "{Transport}: asked for a {Which} buffer of {Asked} bytes, the kernel gave {Given} (net.core.{Sysctl} caps it without CAP_NET_ADMIN: sysctl -w net.core.{Sysctl}={Asked})")]
    public static partial void DatagramBufferCapped(ILogger logger, string transport, string which, int asked, int given, string sysctl);

    [LoggerMessage(16, LogLevel.Information, "connection {Id}: {Protocol} {Cipher}{Client}")]
    public static partial void TlsEstablished(ILogger logger, long id, string protocol, string cipher, string client);

    [LoggerMessage(18, LogLevel.Warning, "access: refused {Count} by {Rule}, the last from {Peer} (at most one such line a second)")]
    public static partial void AccessRefused(ILogger logger, long count, string rule, string peer);

    [LoggerMessage(20, LogLevel.Warning, "--reuse-port: net.ipv4.tcp_migrate_req is 0, so a client that connects while this process stops waits a second for its retried SYN to reach the next process on the port, where the kernel would move it at once: sysctl -w net.ipv4.tcp_migrate_req=1")]
    public static partial void NoMigration(ILogger logger);

    [LoggerMessage(19, LogLevel.Information, "ready: serving")]
    public static partial void Ready(ILogger logger);

    [LoggerMessage(13, LogLevel.Debug, "event loop {Index}: served {Connections} connections; {Polled} of {Reads} reads found their bytes by polling the connection directly (dense traffic)")]
    public static partial void LoopReads(ILogger logger, int index, long connections, long polled, long reads);

    [LoggerMessage(8, LogLevel.Information, "stopped ({AllocatedBytes} bytes allocated by the process since it started)")]
    public static partial void Stopped(ILogger logger, long allocatedBytes);

    /// <summary>"closed by peer", "reset by peer (ECONNRESET)", "error: No route to host (EHOSTUNREACH)".</summary>
    public static string ReasonText(CloseReason reason, SocketError error, string? detail = null) => (reason, error) switch
    {
        (CloseReason.Refused, _) when detail is not null => $"{reason.Describe()}: {detail}",
        (CloseReason.PeerReset, not SocketError.Success) => $"{reason.Describe()} ({SocketErrorText.Of(error).Errno})",
        (CloseReason.Error, not SocketError.Success) => $"{reason.Describe()}: {SocketErrorText.Describe(error)}",
        _ => reason.Describe(),
    };

    [LoggerMessage(23, LogLevel.Warning, "--hex-dump {Name}: the output falls behind: {Dropped} bytes not dumped so far (a '# gap' line marks where)")]
    public static partial void HexDumpBehind(ILogger logger, string name, long dropped);

    [LoggerMessage(24, LogLevel.Warning, "--hex-dump {Name}: writing failed, the dump ends here (the echo goes on): {Error}")]
    public static partial void HexDumpFailed(ILogger logger, string name, string error);
}

using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace EchoKit.Bench;

/// <summary>
/// One flow of the handshake-rate mode (<see cref="BenchOptions.Reconnect"/>), as echoload --reconnect: connect,
/// the TLS handshake with <see cref="BenchOptions.Tls"/>, the greeting, one message echoed and checked, close;
/// then again. A cycle's latency runs from the connect to the echo's last byte. A cycle that fails (refused,
/// reset, a handshake the server refuses) counts as an error and the flow goes on after a moment, so that a
/// server that refuses everything is not hammered in a tight loop.
/// </summary>
internal sealed class ReconnectFlow(LoadGenerator owner, int index, EndPoint target) : ILoadFlow
{
    private readonly long _offset = owner.StartOffset(index);
    private long _cycles;

    public long MeasuredMessages { get; private set; }

    public long Mismatches { get; private set; }

    /// <summary>Cycles that failed.</summary>
    public long Overruns { get; private set; }

    public bool Failed => false;

    public long InFlight => 0;

    public long LastReceiveTimestamp => 0;

    public bool Unsolicited => false;

    public bool Silent => MeasuredMessages == 0 && _cycles == 0;

    public async Task RunAsync()
    {
        var options = owner.Options;
        int size = options.MessageSize;
        var echo = new byte[size];
        var greeting = new byte[Math.Max(1, owner.ReconnectGreeting)];
        while (!owner.Stopping)
        {
            long started = Stopwatch.GetTimestamp();
            try
            {
                using var socket = target is UnixDomainSocketEndPoint
                    ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
                    : new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                using var deadline = new CancellationTokenSource(options.ConnectTimeout);
                await socket.ConnectAsync(target, deadline.Token).ConfigureAwait(false);
                if (options.ProxyHeaderVersion is { } version)
                {
                    await socket.SendAsync(Internal.Proxy.ProxyHeader.Build(version, (IPEndPoint)socket.LocalEndPoint!, (IPEndPoint)socket.RemoteEndPoint!), SocketFlags.None, deadline.Token).ConfigureAwait(false);
                }

                Stream stream = new NetworkStream(socket, ownsSocket: false);
                if (options.Tls)
                {
                    string host = options.UnixPath is null ? options.Host : "localhost";
                    stream = await Client.TlsConnector.AuthenticateAsync(socket, host, options.TlsClient ?? new Client.TlsClientOptions(), options.ConnectTimeout).ConfigureAwait(false);
                }

                await using (stream.ConfigureAwait(false))
                {
                    if (owner.ReconnectGreeting > 0)
                    {
                        await stream.ReadExactlyAsync(greeting.AsMemory(0, owner.ReconnectGreeting), deadline.Token).ConfigureAwait(false);
                    }

                    var message = owner.PatternMemory(_offset + (_cycles * size), size);
                    await stream.WriteAsync(message, deadline.Token).ConfigureAwait(false);
                    await stream.ReadExactlyAsync(echo, deadline.Token).ConfigureAwait(false);
                    _cycles++;
                    if (!echo.AsSpan().SequenceEqual(message.Span))
                    {
                        Mismatches++;
                    }
                    else if (owner.Measuring)
                    {
                        owner.Record((long)((Stopwatch.GetTimestamp() - started) * (double)TimeSpan.TicksPerSecond / Stopwatch.Frequency));
                        MeasuredMessages++;
                    }
                }
            }
            catch (Exception e) when (e is SocketException or IOException or OperationCanceledException or Client.TlsHandshakeException or ObjectDisposedException)
            {
                if (owner.Stopping)
                {
                    return;
                }

                Overruns++;
                owner.ReportCycleError(e is SocketException se ? se.SocketErrorCode : e is IOException { InnerException: SocketException inner } ? inner.SocketErrorCode : null, e.Message);
                await Task.Delay(10).ConfigureAwait(false);
            }
        }
    }

    public void Close()
    {
    }
}

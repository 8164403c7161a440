using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace EchoKit.Bench;

/// <summary>
/// One UDP (or Unix datagram) benchmark flow: ping-pong datagrams on a connected socket. Each datagram carries its
/// sequence number in its first 8 bytes (the rest is pattern), so a reply is matched exactly; a reply
/// that does not come within <see cref="LossTimeout"/> counts as lost, and a late one is ignored.
/// </summary>
internal sealed class UdpLoadConnection : ILoadFlow
{
    private static readonly TimeSpan LossTimeout = TimeSpan.FromMilliseconds(200);

    private readonly LoadGenerator _owner;
    private readonly Socket _socket;
    private readonly int _size;
    private readonly long _offset;

    private UdpLoadConnection(LoadGenerator owner, Socket socket, long offset)
    {
        _owner = owner;
        _socket = socket;
        _size = Math.Max(8, owner.Options.MessageSize);
        _offset = offset;
    }

    public long MeasuredMessages { get; private set; }

    public long Mismatches { get; private set; }

    public long Overruns => 0;

    public long Lost { get; private set; }

    private long _echoes;

    public bool Silent => !Failed && _echoes == 0;

    public bool Failed { get; private set; }

    /// <summary>UDP counts a missing reply as lost after its own timeout: nothing waits in flight for the end.</summary>
    public long InFlight => 0;

    public long LastReceiveTimestamp => 0;

    public bool Unsolicited => false;

    public static UdpLoadConnection Open(LoadGenerator owner, int index, EndPoint endPoint)
    {
        var socket = endPoint is UnixDomainSocketEndPoint
            ? Client.SocketConnector.OpenUnixDatagram() // named, so that the server can answer
            : new Socket(endPoint.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        try
        {
            socket.Connect(endPoint);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return new UdpLoadConnection(owner, socket, owner.StartOffset(index));
    }

    public async Task RunAsync()
    {
        var datagram = new byte[_size];
        var reply = new byte[Math.Max(65_536, _size + 1)]; // room for one byte more than sent: a longer reply is a mismatch, never cut to fit
        long sequence = 0;
        try
        {
            while (!_owner.Stopping)
            {
                sequence++;
                _owner.Pattern(_offset + sequence, _size).CopyTo(datagram);
                BinaryPrimitives.WriteInt64LittleEndian(datagram, sequence);
                long sentAt = Stopwatch.GetTimestamp();
                await _socket.SendAsync(datagram, SocketFlags.None).ConfigureAwait(false);

                using var timeout = new CancellationTokenSource(LossTimeout);
                while (true)
                {
                    int n;
                    try
                    {
                        n = await _socket.ReceiveAsync(reply, SocketFlags.None, timeout.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        if (_owner.Measuring)
                        {
                            Lost++; // no reply in time
                        }

                        break;
                    }

                    if (n >= 8 && BinaryPrimitives.ReadInt64LittleEndian(reply) < sequence)
                    {
                        continue; // a late reply to a datagram already counted as lost
                    }

                    _echoes++;
                    if (!reply.AsSpan(0, n).SequenceEqual(datagram))
                    {
                        Mismatches++;
                    }
                    else if (_owner.Measuring)
                    {
                        _owner.Record((long)((Stopwatch.GetTimestamp() - sentAt) * (double)TimeSpan.TicksPerSecond / Stopwatch.Frequency));
                        MeasuredMessages++;
                    }

                    break;
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Failed = !_owner.Stopping;
            if (Failed)
            {
                _owner.ReportDrop(e is SocketException se ? se.SocketErrorCode : null);
            }
        }
    }

    public void Close() => _socket.Dispose();
}

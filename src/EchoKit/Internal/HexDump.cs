using System.Globalization;
using System.Net;
using System.Text;
using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal;

/// <summary>
/// --hex-dump: every byte each way of every connection, as text that <c>text2pcap</c> reads. Each line is one
/// chunk of at most 16 bytes and a packet of its own (its offset field is always 000000), so that the lines of
/// one connection, picked out with grep, are a valid input too:
/// <code>I 2026-12-03T03:01:15.123456 000000 68 65 6c 6c 6f 0a                                |hello.| conn=3 peer=127.0.0.1:40312 offset=0</code>
/// I: from the peer, O: to it (text2pcap -D), the UTC time of the recv or send (-t "%Y-%m-%dT%H:%M:%S.%f"), the
/// bytes, then what text2pcap ignores: the printable bytes, the connection, the peer and the offset of the line's
/// first byte in that direction of the stream.
/// The engines hand chunks over without waiting: a writer thread formats and writes them. Chunks queued past
/// <see cref="MaxQueuedBytes"/> (a slow disk, a stalled pipe) are dropped, counted, and shown in the dump as a
/// "# gap" line once writing catches up; a write that fails ends the dump (one warning) and never the server.
/// Datagrams are connection 0, and the lines of one datagram are one text2pcap packet (offsets 000000, 000010 …).
/// </summary>
internal sealed class HexDump : IDisposable
{
    public const int MaxQueuedBytes = 8 << 20;
    private const int BytesPerLine = 16;
    private const int ChunkOverhead = 64; // so that a flood of one-byte chunks is bounded too

    private readonly BlockingCollection<Chunk> _chunks = [];
    private readonly Stream _output;
    private readonly string _name;
    private readonly ILogger _logger;
    private readonly Thread _writer;
    private long _queuedBytes;
    private long _droppedBytes; // since the last gap line
    private long _droppedChunks;
    private long _droppedTotal;
    private long _lastWarningMs = long.MinValue / 2;
    private volatile bool _failed;

    private readonly record struct Chunk(long Id, string Peer, bool Inbound, DateTime Time, long Offset, byte[]? Bytes, string? Note, bool Datagram = false);

    /// <param name="output">Where the lines go (a file, or stdout); disposed with the dump.</param>
    /// <param name="name">The file's name, for log lines.</param>
    public HexDump(Stream output, string name, ILogger logger)
    {
        _output = output;
        _name = name;
        _logger = logger;
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = "echokit-hexdump" };
        _writer.Start();
    }

    /// <summary>What waits for the writer (bytes, and a little for each chunk).</summary>
    public long QueuedBytes => Interlocked.Read(ref _queuedBytes);

    /// <summary>Bytes not dumped so far (queue full, or the output failed).</summary>
    public long DroppedBytes => Interlocked.Read(ref _droppedTotal);

    /// <summary>A chunk received from (<paramref name="inbound"/>) or sent to a connection's peer; never blocks.</summary>
    public void Record(long id, EndPoint? peer, bool inbound, long offset, ReadOnlySpan<byte> bytes)
    {
        if (!bytes.IsEmpty)
        {
            Enqueue(id, peer is null ? "unix" : EndPointText.Format(peer), inbound, offset, bytes, datagram: false);
        }
    }

    /// <summary>
    /// A datagram from or to <paramref name="sockaddr"/> (as the kernel gives it): connection 0, and its lines one
    /// packet for text2pcap (their offsets run on within the datagram, so -u makes it one UDP datagram again).
    /// </summary>
    public void RecordDatagram(ReadOnlySpan<byte> sockaddr, bool inbound, ReadOnlySpan<byte> bytes)
    {
        if (!bytes.IsEmpty)
        {
            Enqueue(0, PeerOf(sockaddr), inbound, 0, bytes, datagram: true);
        }
    }

    /// <summary>"1.2.3.4:5", "[::1]:5" (IPv4-mapped written as IPv4), or "unix", from a sockaddr.</summary>
    private static string PeerOf(ReadOnlySpan<byte> sockaddr)
    {
        if (sockaddr.Length < 2)
        {
            return "unix";
        }

        int family = BitConverter.ToUInt16(sockaddr);
        if (family == 2 && sockaddr.Length >= 8)
        {
            return EndPointText.Format(new IPEndPoint(new IPAddress(sockaddr.Slice(4, 4)), (sockaddr[2] << 8) | sockaddr[3]));
        }

        if (family == 10 && sockaddr.Length >= 24)
        {
            return EndPointText.Format(new IPEndPoint(new IPAddress(sockaddr.Slice(8, 16)), (sockaddr[2] << 8) | sockaddr[3]));
        }

        return "unix";
    }

    private void Enqueue(long id, string peer, bool inbound, long offset, ReadOnlySpan<byte> bytes, bool datagram)
    {
        int cost = bytes.Length + ChunkOverhead;
        if (_failed || Interlocked.Add(ref _queuedBytes, cost) > MaxQueuedBytes)
        {
            if (!_failed)
            {
                Interlocked.Add(ref _queuedBytes, -cost);
            }

            Interlocked.Add(ref _droppedBytes, bytes.Length);
            Interlocked.Increment(ref _droppedChunks);
            Interlocked.Add(ref _droppedTotal, bytes.Length);
            WarnFallingBehind();
            return;
        }

        if (Interlocked.Read(ref _droppedChunks) > 0)
        {
            long chunks = Interlocked.Exchange(ref _droppedChunks, 0);
            long dropped = Interlocked.Exchange(ref _droppedBytes, 0);
            TryAdd(new Chunk(0, "", false, DateTime.UtcNow, 0, null,
                $"# gap: {dropped} bytes in {chunks} chunks not dumped (the output fell {MaxQueuedBytes >> 20} MiB behind); each line's offset= says where it is"));
        }

        TryAdd(new Chunk(id, peer, inbound, DateTime.UtcNow, offset, bytes.ToArray(), null, datagram));
    }

    private void TryAdd(Chunk chunk)
    {
        try
        {
            _chunks.Add(chunk);
        }
        catch (InvalidOperationException)
        {
            // Completed: the dump is closing; what still arrives is not dumped.
        }
    }

    private void WarnFallingBehind()
    {
        long now = MonotonicClock.Milliseconds;
        long last = Interlocked.Read(ref _lastWarningMs);
        if (now - last >= 1000 && Interlocked.CompareExchange(ref _lastWarningMs, now, last) == last && !_failed)
        {
            Log.HexDumpBehind(_logger, _name, DroppedBytes);
        }
    }

    private void WriteLoop()
    {
        var line = new StringBuilder(160);
        var text = new byte[64 * 1024];
        int used = 0;
        try
        {
            Append("# echokit hex dump; to pcap: text2pcap -D -t \"%Y-%m-%dT%H:%M:%S.%f\" -T 40000,8888 THIS-FILE out.pcap\n");
            Flush();
            foreach (var chunk in _chunks.GetConsumingEnumerable())
            {
                if (chunk.Note is { } note)
                {
                    Append(note + "\n");
                }
                else
                {
                    Interlocked.Add(ref _queuedBytes, -(chunk.Bytes!.Length + ChunkOverhead));
                    for (int start = 0; start < chunk.Bytes.Length; start += BytesPerLine)
                    {
                        FormatLine(line, chunk, start);
                        Append(line.ToString());
                    }
                }

                if (_chunks.Count == 0)
                {
                    Flush(); // caught up: what is written is on its way
                }
            }

            Flush();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException or NotSupportedException)
        {
            _failed = true;
            Log.HexDumpFailed(_logger, _name, FileErrorText.OfWrite(e));
            while (_chunks.TryTake(out var lost))
            {
                Interlocked.Add(ref _droppedTotal, lost.Bytes?.Length ?? 0);
            }
        }

        void Append(string s)
        {
            int needed = Encoding.UTF8.GetByteCount(s);
            if (used + needed > text.Length)
            {
                _output.Write(text, 0, used);
                used = 0;
            }

            used += Encoding.UTF8.GetBytes(s, 0, s.Length, text, used);
        }

        void Flush()
        {
            if (used > 0)
            {
                _output.Write(text, 0, used);
                used = 0;
            }

            _output.Flush();
        }
    }

    private static void FormatLine(StringBuilder line, Chunk chunk, int start)
    {
        var bytes = chunk.Bytes!;
        int count = Math.Min(BytesPerLine, bytes.Length - start);
        line.Clear();
        line.Append(chunk.Inbound ? 'I' : 'O').Append(' ');
        line.Append(chunk.Time.ToString("yyyy-MM-dd'T'HH:mm:ss.ffffff", CultureInfo.InvariantCulture));
        // A stream's lines stand alone (grep one connection); a datagram's lines make one packet.
        line.Append(' ').Append((chunk.Datagram ? start : 0).ToString("x6", CultureInfo.InvariantCulture));
        for (int i = 0; i < BytesPerLine; i++)
        {
            if (i < count)
            {
                line.Append(' ').Append(bytes[start + i].ToString("x2", CultureInfo.InvariantCulture));
            }
            else
            {
                line.Append("   ");
            }
        }

        line.Append("  |");
        for (int i = 0; i < count; i++)
        {
            byte b = bytes[start + i];
            line.Append(b is >= 0x20 and < 0x7f ? (char)b : '.');
        }

        line.Append("| conn=").Append(chunk.Id.ToString(CultureInfo.InvariantCulture))
            .Append(" peer=").Append(chunk.Peer)
            .Append(" offset=").Append((chunk.Offset + start).ToString(CultureInfo.InvariantCulture))
            .Append('\n');
    }

    /// <summary>Writes what is queued (for up to <paramref name="wait"/>: a stalled output cannot hold the exit), then closes.</summary>
    public bool Close(TimeSpan wait)
    {
        _chunks.CompleteAdding();
        bool done = _writer.Join(wait);
        if (done)
        {
            _output.Dispose();
        }

        return done;
    }

    public void Dispose() => Close(TimeSpan.FromSeconds(2));
}

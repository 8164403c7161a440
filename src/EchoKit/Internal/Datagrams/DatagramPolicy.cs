using Microsoft.Extensions.Logging;

namespace EchoKit.Internal.Datagrams;

/// <summary>
/// What every datagram goes through before it is answered, whichever loop received it, and the counts of
/// what was not answered. Guards against reflection abuse ("Loop DoS", CVE-2024-2169): datagrams from source
/// ports below 1024 (other services' well-known ports) are dropped, and each source address gets a token
/// bucket of <see cref="EchoServerOptions.UdpRate"/> datagrams per second. A datagram the kernel cut short
/// (MSG_TRUNC) is never echoed; nor is one from an unbound Unix sender (no address to answer) or from the
/// server's own address (it would loop for ever). Works on the raw sockaddr and allocates nothing.
/// Drops are logged at most once a second, and summed up at the end.
/// </summary>
internal sealed class DatagramPolicy
{
    private readonly EchoServerOptions _options;
    private readonly ILogger _logger;
    private volatile SourceRateTable? _rates; // replaced whole by a reload
    private readonly OwnAddress _own;
    private readonly bool _isUnix;
    private long _droppedLowPort;
    private long _droppedRate;
    private long _droppedOversize;
    private long _droppedUnnamed;
    private long _droppedSelf;
    private long _droppedTooLarge;
    private long _kernelDrops;
    private long _notSent;
    private long _lastWarningMs = long.MinValue / 2;

    private readonly Access.AccessStage? _access;
    private long _droppedDenied;

    public DatagramPolicy(EchoServerOptions options, ILogger logger, System.Net.EndPoint local, bool isUnix, int bufferSize, Access.AccessStage? access)
    {
        _access = isUnix ? null : access;
        _options = options;
        _logger = logger;
        _isUnix = isUnix;
        BufferSize = bufferSize;
        Transport = isUnix ? "unix datagram" : "udp";
        // One table for all loops: a source is held to its rate whichever loop its datagrams reach. Loops
        // update it without locks; two loops racing on one slot can answer one datagram more, never unboundedly.
        _rates = !isUnix && options.UdpRate > 0 ? new SourceRateTable(options.UdpRate) : null;
        _own = new OwnAddress(local);
    }

    /// <summary>--hex-dump (null: off).</summary>
    public HexDump? Dump => _options.HexDump;

    /// <summary>A new --udp-rate (a reload): every source starts with a full bucket of it.</summary>
    public void ApplyRate(int perSecond) => _rates = !_isUnix && perSecond > 0 ? new SourceRateTable(perSecond) : null;

    /// <summary>The largest datagram answered; a larger one is cut by the kernel and dropped.</summary>
    public int BufferSize { get; }

    /// <summary>"udp" or "unix datagram", for log lines.</summary>
    public string Transport { get; }

    /// <summary>Datagrams the kernel dropped because a receive queue was full (SO_RXQ_OVFL).</summary>
    public long KernelDrops => Interlocked.Read(ref _kernelDrops);

    /// <summary>
    /// Whether to answer a datagram of <paramref name="received"/> bytes from <paramref name="sender"/> (the raw
    /// sockaddr, as long as the kernel said); false: it was counted as dropped.
    /// </summary>
    public bool ShouldAnswer(ReadOnlySpan<byte> sender, int received, bool truncated)
    {
        if (truncated || received > BufferSize)
        {
            return Dropped(ref _droppedOversize); // cut short by the kernel: echoing it would corrupt it silently
        }

        if (_isUnix)
        {
            if (sender.Length <= sizeof(ushort))
            {
                return Dropped(ref _droppedUnnamed); // an unbound sender: only sa_family, no address to answer to
            }
        }
        else
        {
            // sockaddr_in and sockaddr_in6 both carry the port in network order at bytes 2 and 3.
            int port = (sender[2] << 8) | sender[3];
            if (port < 1024 && !_options.UdpAllowLowPorts)
            {
                return Dropped(ref _droppedLowPort);
            }

            if (_access is not null && !_access.AllowsDatagram(sender))
            {
                Interlocked.Increment(ref _droppedDenied); // logged by the access rules, once a second per rule
                return false;
            }

            if (_rates is { } rates && !rates.TryTake(sender, MonotonicClock.Milliseconds))
            {
                return Dropped(ref _droppedRate);
            }
        }

        if (_own.Is(sender))
        {
            // Spoofed from our own address and port, or a Unix sender whose name is now a link to our socket:
            // answering would send it to ourselves, again and again.
            return Dropped(ref _droppedSelf);
        }

        return true;
    }

    /// <summary>A reply larger than the send buffer can ever hold (EMSGSIZE).</summary>
    public void ReplyTooLarge() => Dropped(ref _droppedTooLarge);

    /// <summary>Replies the kernel would not take with the send buffer full (EAGAIN, ENOBUFS).</summary>
    public void RepliesNotSent(int count)
    {
        Interlocked.Add(ref _notSent, count);
        Warn();
    }

    /// <summary>
    /// A loop's socket reported its kernel drop counter (cumulative per socket): <paramref name="increase"/> more
    /// than it last reported.
    /// </summary>
    public void KernelDropped(long increase)
    {
        Interlocked.Add(ref _kernelDrops, increase);
        Warn();
    }

    /// <summary>At the end: the sockets' own drop counts, for drops no later datagram reported.</summary>
    public void KernelDroppedInAll(long total)
    {
        long counted = KernelDrops;
        if (total > counted)
        {
            Interlocked.Add(ref _kernelDrops, total - counted);
        }
    }

    private bool Dropped(ref long counter)
    {
        Interlocked.Increment(ref counter);
        Warn();
        return false;
    }

    private void Warn()
    {
        long now = MonotonicClock.Milliseconds;
        long last = Interlocked.Read(ref _lastWarningMs);
        if (now - last >= 1000 && Interlocked.CompareExchange(ref _lastWarningMs, now, last) == last)
        {
            Log.DatagramsDropped(_logger, Transport, DropCounts());
        }
    }

    /// <summary>The drops so far by reason (echokit.drop_reason), for the metrics.</summary>
    public IEnumerable<(string Reason, long Count)> Drops()
    {
        yield return ("low_port", Interlocked.Read(ref _droppedLowPort));
        yield return ("rate", Interlocked.Read(ref _droppedRate));
        yield return ("denied", Interlocked.Read(ref _droppedDenied));
        yield return ("unbound_sender", Interlocked.Read(ref _droppedUnnamed));
        yield return ("oversize", Interlocked.Read(ref _droppedOversize));
        yield return ("own_address", Interlocked.Read(ref _droppedSelf));
        yield return ("reply_too_large", Interlocked.Read(ref _droppedTooLarge));
        yield return ("send_buffer_full", Interlocked.Read(ref _notSent));
        yield return ("receive_queue_full", KernelDrops);
    }

    public string DropCounts()
    {
        var parts = new List<string>();
        if (!_isUnix)
        {
            parts.Add($"{Interlocked.Read(ref _droppedLowPort)} dropped from ports below 1024");
            parts.Add($"{Interlocked.Read(ref _droppedRate)} dropped over the rate");
            if (_access is not null)
            {
                parts.Add($"{Interlocked.Read(ref _droppedDenied)} dropped by --allow/--deny");
            }
        }
        else
        {
            parts.Add($"{Interlocked.Read(ref _droppedUnnamed)} dropped from unbound senders (no address to answer)");
        }

        parts.Add($"{Interlocked.Read(ref _droppedOversize)} dropped as larger than {BufferSize} bytes");
        parts.Add($"{Interlocked.Read(ref _droppedSelf)} dropped as sent from the server's own address");
        if (_isUnix)
        {
            parts.Add($"{Interlocked.Read(ref _droppedTooLarge)} replies dropped as larger than the send buffer (EMSGSIZE; raise net.core.wmem_max)");
        }

        long notSent = Interlocked.Read(ref _notSent);
        if (notSent > 0)
        {
            parts.Add($"{notSent} replies dropped with the send buffer full (raise --udp-sndbuf)");
        }

        long kernel = KernelDrops;
        if (kernel > 0)
        {
            parts.Add($"{kernel} dropped by the kernel with the receive queue full (raise --udp-rcvbuf)");
        }

        return string.Join(", ", parts);
    }
}

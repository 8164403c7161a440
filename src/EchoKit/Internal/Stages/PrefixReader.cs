namespace EchoKit.Internal.Stages;

/// <summary>
/// One connection's way through the prefix stages, the same for both engines: it buffers what arrives (at
/// most the stages' largest prefix), hands it to the current stage, moves on to the next one with what is left,
/// and once every stage is done returns the bytes after the prefixes, to be echoed after the greeting. Made
/// only for connections of a server that has prefix stages; nothing of it is on the echo path after that.
/// </summary>
internal sealed class PrefixReader
{
    private readonly IReadOnlyList<IPrefixStage> _stages;
    private readonly ConnectionContext _context;
    private readonly byte[] _buffer;
    private int _length;
    private int _index;

    /// <summary>The reader for a new connection, or null when no stage has a prefix to read from it.</summary>
    /// <param name="admitAfter">
    /// Run once the prefixes are read, on the peer they left (the real client behind a PROXY header): the server
    /// logs that client and applies the access rules it deferred for this connection; a reason refuses it.
    /// </param>
    public static PrefixReader? For(IReadOnlyList<IPrefixStage> stages, ConnectionContext context, long nowMs, Func<ConnectionContext, string?>? admitAfter = null)
    {
        var applying = stages.Where(s => s.AppliesTo(context)).ToArray();
        return applying.Length == 0 ? null : new PrefixReader(applying, context, nowMs) { _admitAfter = admitAfter };
    }

    private Func<ConnectionContext, string?>? _admitAfter;

    private PrefixReader(IReadOnlyList<IPrefixStage> stages, ConnectionContext context, long nowMs)
    {
        _stages = stages;
        _context = context;
        _buffer = new byte[stages.Max(s => s.MaxPrefixBytes)];
        DeadlineMs = nowMs + (long)stages.Max(s => s.Timeout).TotalMilliseconds;
    }

    public ConnectionContext Context => _context;

    /// <summary>MonotonicClock milliseconds by which every prefix must have arrived.</summary>
    public long DeadlineMs { get; }

    /// <summary>The reason a connection gets when the deadline passes.</summary>
    public string TimeoutReason => $"{_stages[_index].Name}: prefix not complete within {Durations.Format(_stages[_index].Timeout)}";

    /// <summary>
    /// Takes bytes just received. Returns null while more are needed; otherwise either a refusal (with its
    /// reason) or done, with the bytes that followed the prefixes (possibly none).
    /// </summary>
    public (string? RefusedBecause, byte[] Payload)? Feed(ReadOnlySpan<byte> received)
    {
        int take = Math.Min(received.Length, _buffer.Length - _length);
        received[..take].CopyTo(_buffer.AsSpan(_length));
        _length += take;
        var beyond = received[take..]; // not buffered: only possible once the buffer is full

        while (true)
        {
            var stage = _stages[_index];
            var verdict = stage.OnPrefix(_buffer.AsSpan(0, Math.Min(_length, stage.MaxPrefixBytes)), _context);
            if (verdict.RefusedBecause is { } reason)
            {
                return (reason, []);
            }

            if (!verdict.IsDone)
            {
                if (_length >= stage.MaxPrefixBytes)
                {
                    return ($"{stage.Name}: prefix longer than {stage.MaxPrefixBytes} bytes", []);
                }

                return null;
            }

            // This stage's prefix is read: what follows goes to the next stage, or is the client's payload.
            int consumed = Math.Clamp(verdict.Consumed, 0, _length);
            _buffer.AsSpan(consumed, _length - consumed).CopyTo(_buffer);
            _length -= consumed;
            if (++_index == _stages.Count)
            {
                return _admitAfter?.Invoke(_context) is { } refused
                    ? (refused, [])
                    : (null, [.. _buffer.AsSpan(0, _length), .. beyond]);
            }

            int more = Math.Min(beyond.Length, _buffer.Length - _length);
            beyond[..more].CopyTo(_buffer.AsSpan(_length));
            _length += more;
            beyond = beyond[more..];
        }
    }
}

using System.Collections.Concurrent;
using System.Net;
using System.Runtime.InteropServices;
using System.Text;
using EchoKit.Internal.Stages;
using Microsoft.Extensions.Logging;

namespace EchoKit.Internal.Access;

/// <summary>
/// Who may connect, checked before admission so that a refused peer gets no byte at all (not even "server
/// busy"): --allow/--deny (<see cref="AddressRules"/>), --allow-uid/--allow-gid for Unix sockets (the peer's
/// credentials from SO_PEERCRED), and --max-per-address (connections at once from one address, IPv6 counted by
/// its /64). Refusals by rule are counted and logged at most once a second per rule, not a line per connection
/// (a scan of a denied range cannot flood the log). The per-address counts live in a fixed table of
/// <see cref="Slots"/> counters: its memory is the same for one source or millions; two addresses that share a
/// slot share a count, which only ever refuses sooner.
/// </summary>
internal sealed partial class AccessStage : IConnectionStage
{
    public const int Slots = 1 << 16;

    private readonly ILogger _logger;
    private volatile AccessSettings _settings; // replaced whole by a reload
    private volatile int[]? _perAddress; // made when a limit is first set; kept (for the counts) if it is lifted
    private readonly ConcurrentDictionary<long, int> _counted = new(); // connection id → its per-address slot
    private readonly int _seed = Random.Shared.Next();
    private volatile byte[] _busyLine;
    private long _notAllowed;
    private long _notAllowedLoggedMs = long.MinValue / 2;
    private long _credentialsRefused;
    private long _overLimit;
    private long _overLimitLoggedMs = long.MinValue / 2;
    private long _credentialsLoggedMs = long.MinValue / 2;

    public AccessStage(AccessSettings settings, ILogger logger)
    {
        _logger = logger;
        _settings = settings;
        _busyLine = [];
        Reload(settings);
    }

    /// <summary>
    /// New rules and limits (a reload) for the connections and datagrams that come from now on; open connections
    /// stay. A per-address limit set now counts the connections that arrive from now on.
    /// </summary>
    public void Reload(AccessSettings settings)
    {
        if (settings.MaxPerAddress > 0 && _perAddress is null)
        {
            _perAddress = new int[Slots];
        }

        _busyLine = Encoding.ASCII.GetBytes($"server busy: {Log.Count(settings.MaxPerAddress, "connection")} from your address\n");
        _settings = settings;
    }

    public StageVerdict OnAccepted(ConnectionContext connection)
    {
        var settings = _settings;
        if (connection.Peer is IPEndPoint ip)
        {
            if (settings.Rules is null && settings.MaxPerAddress == 0)
            {
                return StageVerdict.Continue;
            }

            UInt128 key = AddressRules.ToKey(ip.Address);
            if (settings.Rules is { } rules && !rules.Allows(key, out var rule))
            {
                Refused(rule, ip);
                return StageVerdict.RefuseQuietly(rule is null ? "not in any --allow" : $"--deny {rule.Text}");
            }

            if (settings.MaxPerAddress > 0 && _perAddress is { } table)
            {
                int slot = Slot(key);
                if (Interlocked.Increment(ref table[slot]) > settings.MaxPerAddress)
                {
                    Interlocked.Decrement(ref table[slot]);
                    string why = $"over --max-per-address {settings.MaxPerAddress}";
                    if (RateLimit(ref _overLimit, ref _overLimitLoggedMs) is { } n)
                    {
                        Log.AccessRefused(_logger, n, why, EndPointText.Format(ip));
                    }

                    return new StageVerdict(why, CloseReason.Refused, _busyLine, Quiet: true);
                }

                _counted[connection.Id] = slot;
            }
        }
        else if (settings.AllowedUids.Count + settings.AllowedGids.Count > 0)
        {
            var (uid, gid) = PeerCredentials(connection.Descriptor);
            if (!settings.AllowedUids.Contains(uid) && !settings.AllowedGids.Contains(gid))
            {
                string why = $"uid {uid} gid {gid} not in --allow-uid/--allow-gid";
                if (RateLimit(ref _credentialsRefused, ref _credentialsLoggedMs) is { } count)
                {
                    Log.AccessRefused(_logger, count, why, "a Unix client");
                }

                return StageVerdict.RefuseQuietly(why);
            }
        }

        return StageVerdict.Continue;
    }

    /// <summary>A connection has ended (or was refused by a later stage): its per-address count is released.</summary>
    public void Released(long id)
    {
        if (_perAddress is { } table && _counted.TryRemove(id, out int slot))
        {
            Interlocked.Decrement(ref table[slot]);
        }
    }

    /// <summary>Whether a datagram from <paramref name="sockaddr"/> may be answered (--allow/--deny; counted and logged like connections).</summary>
    public bool AllowsDatagram(ReadOnlySpan<byte> sockaddr)
    {
        if (_settings.Rules is not { } rules || AddressRules.ToKey(sockaddr) is not { } key)
        {
            return true;
        }

        if (rules.Allows(key, out var rule))
        {
            return true;
        }

        Refused(rule, null);
        return false;
    }

    private int Slot(UInt128 key)
    {
        // IPv6 by its /64 (one host usually holds a whole /64); IPv4 (mapped) by its address.
        bool v4 = (key >> 32) == 0xFFFF;
        ulong group = v4 ? (ulong)key : (ulong)(key >> 64);
        return (int)((uint)HashCode.Combine(group, v4, _seed) & (Slots - 1));
    }

    private void Refused(AddressRules.Rule? rule, IPEndPoint? peer)
    {
        long? count = rule is null
            ? RateLimit(ref _notAllowed, ref _notAllowedLoggedMs)
            : RateLimit(ref rule.Refused, ref rule.LastLoggedMs);
        if (count is { } n)
        {
            Log.AccessRefused(_logger, n, rule is null ? "not in any --allow" : $"--deny {rule.Text}", peer is null ? "a datagram sender" : EndPointText.Format(peer));
        }
    }

    /// <summary>Counts one refusal; returns how many to report when a line is due (at most one a second), else null.</summary>
    private static long? RateLimit(ref long pending, ref long lastLoggedMs)
    {
        long count = Interlocked.Increment(ref pending);
        long now = MonotonicClock.Milliseconds;
        long last = Interlocked.Read(ref lastLoggedMs);
        if (now - last < 1000 || Interlocked.CompareExchange(ref lastLoggedMs, now, last) != last)
        {
            return null;
        }

        Interlocked.Add(ref pending, -count);
        return count;
    }

    private const int SOL_SOCKET = 1;
    private const int SO_PEERCRED = 17;

    [StructLayout(LayoutKind.Sequential)]
    private struct UCred
    {
        public int Pid;
        public uint Uid;
        public uint Gid;
    }

    private static unsafe (uint Uid, uint Gid) PeerCredentials(int fd)
    {
        UCred credentials = default;
        uint length = (uint)sizeof(UCred);
        return GetSockOpt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) == 0 ? (credentials.Uid, credentials.Gid) : (uint.MaxValue, uint.MaxValue);
    }

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    private static unsafe partial int GetSockOpt(int fd, int level, int name, void* value, uint* length);
}

/// <summary>What --allow/--deny, --max-per-address and --allow-uid/--allow-gid asked for.</summary>
internal sealed record AccessSettings
{
    public AddressRules? Rules { get; init; }

    /// <summary>Connections at once from one address (IPv6: one /64); 0: no limit.</summary>
    public int MaxPerAddress { get; init; }

    public IReadOnlySet<uint> AllowedUids { get; init; } = new HashSet<uint>();

    public IReadOnlySet<uint> AllowedGids { get; init; } = new HashSet<uint>();

    public bool Any => Rules is { IsEmpty: false } || MaxPerAddress > 0 || AllowedUids.Count + AllowedGids.Count > 0;
}

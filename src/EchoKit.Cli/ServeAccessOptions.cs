using System.CommandLine;
using EchoKit.Internal.Access;

namespace EchoKit.Cli;

/// <summary><c>echokit serve</c>'s access flags: --allow/--deny (and their files), --max-per-address, --allow-uid/--allow-gid.</summary>
internal sealed class ServeAccessOptions
{
    private readonly Option<string[]> _allow = new("--allow") { Description = "Accept only peers in this CIDR (repeatable; IPv4 rules match IPv4-mapped IPv6 peers)", HelpName = "cidr" };
    private readonly Option<string[]> _deny = new("--deny") { Description = "Refuse peers in this CIDR, before any byte is sent (repeatable; deny wins over allow)", HelpName = "cidr" };
    private readonly Option<string[]> _allowFile = new("--allow-file") { Description = "--allow rules from a file: one CIDR a line, # comments", HelpName = "file" };
    private readonly Option<string[]> _denyFile = new("--deny-file") { Description = "--deny rules from a file: one CIDR a line, # comments", HelpName = "file" };
    private readonly Option<int> _maxPerAddress = CliOptions.Integer("--max-per-address", "Connections at once from one address (IPv6: one /64); one more gets the busy line (0: no limit)", 0, 0, 10_000_000);
    private readonly Option<uint[]> _allowUid = new("--allow-uid") { Description = "Unix sockets: accept peers running as this user id (SO_PEERCRED; repeatable)", HelpName = "uid" };
    private readonly Option<uint[]> _allowGid = new("--allow-gid") { Description = "Unix sockets: accept peers running with this group id (SO_PEERCRED; repeatable)", HelpName = "gid" };

    private readonly Option<bool> _proxyProtocol = new("--proxy-protocol") { Description = "Read a PROXY protocol header (v1 or v2) from the peers of --proxy-from: the real client is what logs and limits see" };
    private readonly Option<string[]> _proxyFrom = new("--proxy-from") { Description = "The load balancers whose PROXY headers are trusted, and required (CIDR, repeatable)", HelpName = "cidr" };
    private readonly DurationOption _proxyTimeout = CliOptions.Duration("--proxy-timeout", "A PROXY header not complete after this long refuses the connection", "5s", allowZero: false);

    private readonly Option<int?> _healthPort = new("--health-port")
    {
        Description = "A TCP port that answers 'ok' while the server serves, closed first when it stops (for a load balancer's health check)",
        HelpName = "port",
        CustomParser = r => CliOptions.ParseInteger(r, "--health-port", 0, 65535),
    };

    private readonly Option<bool> _reusePort = new("--reuse-port") { Description = "SO_REUSEPORT: several processes share the port (restart without downtime: start the new one, then SIGTERM the old)" };

    public IEnumerable<Option> All => [_allow, _deny, _allowFile, _denyFile, _maxPerAddress, _allowUid, _allowGid, _proxyProtocol, _proxyFrom, _proxyTimeout.Option, _healthPort, _reusePort];

    public bool ReusePort(ParseResult result) => result.GetValue(_reusePort);

    public int? HealthPort(ParseResult result) => result.GetValue(_healthPort);

    /// <summary>The PROXY protocol stage asked for (null: none), or a usage error.</summary>
    public (Internal.Proxy.ProxyProtocolStage? Stage, string? UsageError) ReadProxy(ParseResult result, bool unix)
    {
        string[] from = result.GetValue(_proxyFrom) ?? [];
        if (!result.GetValue(_proxyProtocol))
        {
            return (null, from.Length > 0 || result.GetValue(_proxyTimeout.Option) is not null ? "--proxy-from and --proxy-timeout go with --proxy-protocol" : null);
        }

        if (unix)
        {
            return (null, "--proxy-protocol on a Unix socket is not supported yet: serve TCP behind the load balancer");
        }

        if (from.Length == 0)
        {
            return (null, "--proxy-protocol needs --proxy-from CIDR: the load balancers whose headers are trusted (anyone else is served as is)");
        }

        try
        {
            var trusted = AddressRules.Parse(from.Select(r => (r, "--proxy-from")), []);
            return (new Internal.Proxy.ProxyProtocolStage(trusted, _proxyTimeout.Get(result)!.Value), null);
        }
        catch (FormatException e)
        {
            return (null, e.Message);
        }
    }

    /// <summary>The access settings asked for (null: anyone), or a usage error, or a file/rule error.</summary>
    public (AccessSettings? Settings, string? UsageError, string? Error) Read(ParseResult result, bool unix)
    {
        string[] allow = result.GetValue(_allow) ?? [], deny = result.GetValue(_deny) ?? [];
        string[] allowFiles = result.GetValue(_allowFile) ?? [], denyFiles = result.GetValue(_denyFile) ?? [];
        uint[] uids = result.GetValue(_allowUid) ?? [], gids = result.GetValue(_allowGid) ?? [];
        bool addressRules = allow.Length + deny.Length + allowFiles.Length + denyFiles.Length > 0;
        if (unix && (addressRules || result.GetValue(_maxPerAddress) > 0))
        {
            return (null, "--allow, --deny and --max-per-address check IP addresses: a Unix socket's peers have none (use --allow-uid/--allow-gid)", null);
        }

        if (!unix && uids.Length + gids.Length > 0)
        {
            return (null, "--allow-uid and --allow-gid check a Unix socket's peer: they need --unix", null);
        }

        AddressRules? rules = null;
        if (addressRules)
        {
            try
            {
                rules = AddressRules.Parse(
                    allow.Select(r => (r, "--allow")).Concat(allowFiles.SelectMany(AddressRules.ReadFile)),
                    deny.Select(r => (r, "--deny")).Concat(denyFiles.SelectMany(AddressRules.ReadFile)));
            }
            catch (FormatException e)
            {
                bool fromFile = !e.Message.StartsWith("invalid --", StringComparison.Ordinal);
                return fromFile ? (null, null, e.Message) : (null, e.Message, null);
            }
        }

        var settings = new AccessSettings
        {
            Rules = rules,
            MaxPerAddress = result.GetValue(_maxPerAddress),
            AllowedUids = uids.ToHashSet(),
            AllowedGids = gids.ToHashSet(),
        };
        return (settings.Any ? settings : null, null, null);
    }
}

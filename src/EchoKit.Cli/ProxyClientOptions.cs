using System.CommandLine;
using System.Net;
using System.Net.Sockets;
using EchoKit.Internal.Proxy;

namespace EchoKit.Cli;

/// <summary><c>--proxy-protocol v1|v2 [--proxy-source ADDR:PORT]</c> for connect and bench: send a PROXY header first, as a load balancer would.</summary>
internal sealed record ProxyClientOptions(Option<string?> Version, Option<string?> Source)
{
    public static ProxyClientOptions Create() => new(
        new Option<string?>("--proxy-protocol") { Description = "Send a PROXY protocol header first (v1 text or v2 binary), as a load balancer would", HelpName = "v1|v2" },
        new Option<string?>("--proxy-source") { Description = "The client the header names [default: our own address and port]", HelpName = "addr:port" });

    /// <summary>The header to send, made per connection from its endpoints.</summary>
    public sealed record Header(int Version, IPEndPoint? Source)
    {
        public byte[] For(Socket socket) =>
            ProxyHeader.Build(Version, Source ?? (IPEndPoint)socket.LocalEndPoint!, (IPEndPoint)socket.RemoteEndPoint!);
    }

    public (Header? Header, string? UsageError) Read(ParseResult result, bool notTcp)
    {
        string? version = result.GetValue(Version), source = result.GetValue(Source);
        if (version is null)
        {
            return (null, source is null ? null : "--proxy-source goes with --proxy-protocol");
        }

        if (version is not ("v1" or "v2" or "1" or "2"))
        {
            return (null, $"invalid --proxy-protocol value '{version}': expected v1 or v2");
        }

        if (notTcp)
        {
            return (null, "--proxy-protocol is for TCP connections: leave out --udp and --unix");
        }

        IPEndPoint? from = null;
        if (source is not null && !IPEndPoint.TryParse(source, out from))
        {
            return (null, $"invalid --proxy-source value '{source}': expected ADDRESS:PORT, as 192.0.2.7:5000 or [2001:db8::7]:5000");
        }

        return (new Header(version.EndsWith('1') ? 1 : 2, from), null);
    }
}

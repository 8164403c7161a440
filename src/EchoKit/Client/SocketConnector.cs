using System.Net;
using System.Net.Sockets;

namespace EchoKit.Client;

/// <summary>Opens client connections the way nc does: resolve, then try every address in turn.</summary>
public static class SocketConnector
{
    /// <summary>
    /// Resolves <paramref name="host"/> (a name or an IPv4/IPv6 literal) and connects to the first
    /// address that accepts within <paramref name="timeout"/> (per address; <see cref="Timeout.InfiniteTimeSpan"/> for none).
    /// Throws <see cref="ConnectFailedException"/> naming what failed and why.
    /// </summary>
    public static async Task<Socket> ConnectAsync(string host, int port, TimeSpan timeout, CancellationToken cancellationToken = default) =>
        await ConnectAsync(host, port, timeout, family: null, cancellationToken).ConfigureAwait(false);

    /// <summary>As above, trying only addresses of <paramref name="family"/> when it is given (-4 / -6).</summary>
    public static async Task<Socket> ConnectAsync(string host, int port, TimeSpan timeout, AddressFamily? family, CancellationToken cancellationToken = default)
    {
        var addresses = await ResolveAsync(host, port, family, cancellationToken).ConfigureAwait(false);
        ConnectFailedException? last = null;
        foreach (var address in addresses)
        {
            try
            {
                var socket = await ConnectOneAsync(
                    new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp), new IPEndPoint(address, port), host, port, timeout, cancellationToken).ConfigureAwait(false);
                socket.NoDelay = true;
                return socket;
            }
            catch (ConnectFailedException e)
            {
                last = e; // try the next address
            }
        }

        throw last!;
    }

    /// <summary>
    /// The addresses of <paramref name="host"/> (a name, or an IPv4/IPv6 literal, bracketed or not), only
    /// those of <paramref name="family"/> when it is given. Throws <see cref="ConnectFailedException"/>
    /// ("cannot resolve NAME: ...", "NAME has no IPv6 address: ...") when there are none.
    /// </summary>
    public static async Task<IPAddress[]> ResolveAsync(string host, int port, AddressFamily? family, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(host);
        IPAddress[] addresses;
        if (IPAddress.TryParse(host.Trim('[', ']'), out var literal))
        {
            addresses = [literal];
        }
        else
        {
            try
            {
                addresses = await Dns.GetHostAddressesAsync(host, cancellationToken).ConfigureAwait(false);
            }
            catch (SocketException e)
            {
                throw new ConnectFailedException($"cannot resolve {host}: {SocketErrorText.Describe(e.SocketErrorCode)}", host, port, e.SocketErrorCode, e);
            }

            if (addresses.Length == 0)
            {
                throw new ConnectFailedException($"cannot resolve {host}: {SocketErrorText.Describe(SocketError.HostNotFound)}", host, port, SocketError.HostNotFound);
            }
        }

        if (family is { } only)
        {
            addresses = addresses.Where(a => a.AddressFamily == only || (a.IsIPv4MappedToIPv6 && only == AddressFamily.InterNetwork)).ToArray();
            if (addresses.Length == 0)
            {
                throw new ConnectFailedException(
                    $"{host} has no {(only == AddressFamily.InterNetwork ? "IPv4" : "IPv6")} address: {SocketErrorText.Describe(SocketError.NoData)}",
                    host, port, SocketError.NoData);
            }
        }

        return addresses;
    }

    /// <summary>Connects to a Unix domain stream socket file.</summary>
    public static Task<Socket> ConnectUnixAsync(string path, TimeSpan timeout, CancellationToken cancellationToken = default) =>
        ConnectOneAsync(new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified),
            new UnixDomainSocketEndPoint(path), path, 0, timeout, cancellationToken);

    /// <summary>
    /// A Unix datagram socket connected to <paramref name="path"/>. It is bound first, to a fresh name in
    /// Linux's abstract namespace (no file to clean up), because a server can only answer a named sender.
    /// </summary>
    public static Task<Socket> ConnectUnixDatagramAsync(string path, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        var socket = OpenUnixDatagram();
        return ConnectOneAsync(socket, new UnixDomainSocketEndPoint(path), path, 0, timeout, cancellationToken);
    }

    /// <summary>An unconnected Unix datagram socket bound to a unique abstract name, so that replies can reach it.</summary>
    public static Socket OpenUnixDatagram()
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint($"\0echokit-{Environment.ProcessId}-{Interlocked.Increment(ref s_unixNames)}-{Random.Shared.Next():x8}"));
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private static long s_unixNames;

    /// <summary>One connect with a timeout; on failure the socket is closed and the reason thrown as <see cref="ConnectFailedException"/>.</summary>
    private static async Task<Socket> ConnectOneAsync(Socket socket, EndPoint endPoint, string host, int port, TimeSpan timeout, CancellationToken cancellationToken)
    {
        using var attempt = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        if (timeout != Timeout.InfiniteTimeSpan)
        {
            attempt.CancelAfter(timeout);
        }

        try
        {
            await socket.ConnectAsync(endPoint, attempt.Token).ConfigureAwait(false);
            return socket;
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            socket.Dispose();
            throw new ConnectFailedException(
                $"connect to {EndPointText.Format(endPoint)} failed: timed out after {Durations.Format(timeout)} (ETIMEDOUT)", host, port, SocketError.TimedOut);
        }
        catch (SocketException e)
        {
            var type = socket.SocketType;
            socket.Dispose();
            // A Unix socket path that does not exist comes back as EADDRNOTAVAIL from .NET; say what it is.
            string why = (endPoint, e.SocketErrorCode) switch
            {
                (UnixDomainSocketEndPoint, SocketError.AddressNotAvailable) => "No such file or directory (ENOENT)",
                (UnixDomainSocketEndPoint, SocketError.ProtocolType) => SocketErrorText.Describe(e.SocketErrorCode)
                    + (type == SocketType.Dgram ? ": it is a stream socket (leave out --udp)" : ": it is a datagram socket (add --udp)"),
                _ => SocketErrorText.Describe(e.SocketErrorCode),
            };
            throw new ConnectFailedException($"connect to {EndPointText.Format(endPoint)} failed: {why}", host, port, e.SocketErrorCode, e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}

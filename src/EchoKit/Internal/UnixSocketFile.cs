using System.Net.Sockets;

namespace EchoKit.Internal;

/// <summary>
/// The life of a socket file that a server binds, for stream and datagram sockets alike: a file left
/// by a crashed server (nobody bound to it) is replaced, a live one is refused with EADDRINUSE,
/// anything that is not a socket is never touched; permissions are applied after bind, and the file
/// is removed when the server closes.
/// </summary>
internal static class UnixSocketFile
{
    /// <summary>Removes <paramref name="path"/> if it is a socket nobody is bound to; throws if it is live or not a socket.</summary>
    public static void RemoveIfStale(string path)
    {
        var endPoint = new UnixDomainSocketEndPoint(path);
        if (!File.Exists(path) && !Directory.Exists(path))
        {
            return;
        }

        if (FileKind.IsSocket(path) != true)
        {
            // Never delete what may be someone's file (connect() to a regular file says ECONNREFUSED too).
            throw new ListenFailedException("bind", endPoint, SocketError.AddressAlreadyInUse,
                new IOException($"{path} exists and is not a socket"));
        }

        // ECONNREFUSED whatever the file's socket type when nobody is bound; a live socket of the
        // other type answers EPROTOTYPE, which is as live as a successful connect.
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(endPoint);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            File.Delete(path); // a socket nobody listens on: left by a server that did not clean up
            return;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ProtocolType)
        {
            // A live datagram socket (our probe is a stream one): in use all the same.
        }
        catch (SocketException e)
        {
            throw new ListenFailedException("bind", endPoint, e.SocketErrorCode, e);
        }

        throw new ListenFailedException("bind", endPoint, SocketError.AddressAlreadyInUse); // a live server owns it
    }

    public static void ApplyMode(string path, UnixFileMode? mode)
    {
        if (mode is { } permissions && !OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(path, permissions);
        }
    }

    public static void Remove(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (IOException)
        {
            // Someone else removed or replaced it.
        }
    }
}

using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace EchoKit.Internal;

/// <summary>
/// The life of a socket file that a server binds, for stream and datagram sockets alike.
///
/// - A file left by a crashed server (nobody bound to it) is replaced; a live one is refused with
///   EADDRINUSE (a listener whose backlog is full counts as live: the probe never waits); anything that
///   is not a socket is never touched.
/// - Two servers starting on one path at once: the probe, the removal of a stale file and the bind run
///   under an exclusive flock(2) on the directory, so the second one sees the first one's live socket
///   (before, both could find the stale file, and the second removed the first one's fresh socket).
/// - The mode is in force from the moment the file exists: the bind runs under a umask that yields it
///   (before, chmod after bind left the socket open to anyone for a moment under a permissive umask).
/// - At exit only the file this server bound is removed, recognised by device and inode: a file put at the
///   path meanwhile (a regular file, another server's live socket) is left alone.
/// </summary>
internal static partial class UnixSocketFile
{
    private const int LOCK_EX = 2;
    private const int LOCK_NB = 4;
    private const int LOCK_UN = 8;
    private static readonly TimeSpan LockPatience = TimeSpan.FromSeconds(3);
    private static readonly Lock UmaskGate = new();

    /// <summary>A file's identity: what was bound is what gets removed.</summary>
    public readonly record struct Identity(ulong Device, ulong Inode);

    /// <summary>
    /// Binds <paramref name="socket"/> to <paramref name="path"/>, replacing a stale socket file, with
    /// <paramref name="mode"/> from the start; returns the file's identity. Throws <see cref="ListenFailedException"/>.
    /// </summary>
    public static Identity? Bind(Socket socket, string path, UnixFileMode? mode)
    {
        var endPoint = new UnixDomainSocketEndPoint(path);
        var bindTo = new UnownedFileEndPoint(endPoint);
        using var directoryLock = LockDirectory(path, endPoint);
        RemoveIfStale(path, endPoint);
        try
        {
            if (mode is { } permissions && OperatingSystem.IsLinux())
            {
                // bind(2) creates the file with 0777 & ~umask: a umask of ~mode makes it exactly mode.
                lock (UmaskGate)
                {
                    int previous = Umask(~(int)permissions & 0x1FF);
                    try
                    {
                        socket.Bind(bindTo);
                    }
                    finally
                    {
                        Umask(previous);
                    }
                }
            }
            else
            {
                socket.Bind(bindTo);
            }
        }
        catch (SocketException e)
        {
            throw new ListenFailedException("bind", endPoint, e.SocketErrorCode, e);
        }

        return IdentityOf(path);
    }

    /// <summary>Removes the socket file at <paramref name="path"/> if it is still the one this server bound.</summary>
    public static bool Remove(string path, Identity? bound)
    {
        if (bound is null || IdentityOf(path) != bound || FileKind.IsSocket(path) != true)
        {
            return false; // replaced or removed by someone else: not ours to delete
        }

        try
        {
            File.Delete(path);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Removes <paramref name="path"/> if it is a socket nobody is bound to; throws if it is live or not a socket.</summary>
    private static void RemoveIfStale(string path, UnixDomainSocketEndPoint endPoint)
    {
        if (IdentityOf(path) is not { } before)
        {
            return; // nothing there (or nothing we can see: bind will say why)
        }

        if (FileKind.IsSocket(path) != true)
        {
            // Never delete what may be someone's file (connect() to a regular file says ECONNREFUSED too).
            throw new ListenFailedException("bind", endPoint, SocketError.AddressAlreadyInUse,
                new IOException($"{path} exists and is not a socket"));
        }

        // ECONNREFUSED whatever the file's socket type when nobody is bound; a live socket of the other
        // type answers EPROTOTYPE, which is as live as a successful connect. Non-blocking, so a live listener
        // with a full backlog answers EAGAIN at once instead of holding the start (and SIGTERM) hostage.
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified) { Blocking = false };
        try
        {
            probe.Connect(endPoint);
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            // A socket nobody listens on, left by a server that did not clean up: removed if it is still
            // the file we probed (the directory lock keeps other EchoKit servers out; this keeps out the rest).
            if (IdentityOf(path) == before)
            {
                File.Delete(path);
            }

            return;
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ProtocolType or SocketError.WouldBlock or SocketError.InProgress)
        {
            // A live datagram socket (our probe is a stream one), or a live listener with a full backlog.
        }
        catch (SocketException e)
        {
            throw new ListenFailedException("bind", endPoint, e.SocketErrorCode, e);
        }

        throw new ListenFailedException("bind", endPoint, SocketError.AddressAlreadyInUse); // a live server owns it
    }

    /// <summary>
    /// The socket file's address, bound so that .NET does not own the file: bound with a
    /// <see cref="UnixDomainSocketEndPoint"/>, a Socket deletes whatever is at the path when it is disposed
    /// (BoundFileName), even a file someone put there since. Removal is ours (<see cref="Remove"/>), by identity.
    /// Everything else (the sockaddr, the peers' addresses) is the plain endpoint's.
    /// </summary>
    private sealed class UnownedFileEndPoint(UnixDomainSocketEndPoint inner) : System.Net.EndPoint
    {
        public override AddressFamily AddressFamily => AddressFamily.Unix;

        public override System.Net.SocketAddress Serialize() => inner.Serialize();

        public override System.Net.EndPoint Create(System.Net.SocketAddress socketAddress) => inner.Create(socketAddress);

        public override string ToString() => inner.ToString();
    }

    /// <summary>flock(2) on the socket's directory for the probe-remove-bind sequence; null where there is none to take.</summary>
    private static DirectoryLock? LockDirectory(string path, UnixDomainSocketEndPoint endPoint)
    {
        if (!OperatingSystem.IsLinux())
        {
            return null;
        }

        string directory = Path.GetDirectoryName(Path.GetFullPath(path)) is { Length: > 0 } d ? d : "/";
        int fd = Open(directory, 0 /* O_RDONLY */ | 0x80000 /* O_CLOEXEC */);
        if (fd < 0)
        {
            return null; // a missing or unreadable directory: bind reports it (ENOENT, EACCES)
        }

        var until = Environment.TickCount64 + (long)LockPatience.TotalMilliseconds;
        while (Flock(fd, LOCK_EX | LOCK_NB) != 0)
        {
            if (Environment.TickCount64 > until)
            {
                Close(fd);
                throw new ListenFailedException("bind", endPoint, SocketError.AddressAlreadyInUse,
                    new IOException($"{directory} stayed locked for {LockPatience.TotalSeconds:0} s by another process starting a server there"));
            }

            Thread.Sleep(10); // another server is between its probe and its bind: a few milliseconds
        }

        return new DirectoryLock(fd);
    }

    private sealed class DirectoryLock(int fd) : IDisposable
    {
        public void Dispose()
        {
            Flock(fd, LOCK_UN);
            Close(fd);
        }
    }

    /// <summary>Device and inode of <paramref name="path"/> itself (lstat, never following a link); null if there is nothing.</summary>
    public static Identity? IdentityOf(string path) =>
        FileKind.Stat(path) is { } stat ? new Identity(stat.Device, stat.Inode) : null;

    [LibraryImport("libc", EntryPoint = "umask")]
    private static partial int Umask(int mask);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "flock", SetLastError = true)]
    private static partial int Flock(int fd, int operation);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);
}

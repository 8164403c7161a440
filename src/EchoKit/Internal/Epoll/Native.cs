using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace EchoKit.Internal.Epoll;

/// <summary>The Linux calls the epoll engine makes directly, and the constants they take (x86-64 values).</summary>
internal static unsafe partial class Native
{
    public const int EPOLL_CLOEXEC = 0x80000;
    public const int EPOLL_CTL_ADD = 1;
    public const int EPOLL_CTL_DEL = 2;
    public const int EPOLL_CTL_MOD = 3;
    public const uint EPOLLIN = 0x001;
    public const uint EPOLLPRI = 0x002;
    public const uint EPOLLOUT = 0x004;
    public const uint EPOLLERR = 0x008;
    public const uint EPOLLHUP = 0x010;
    public const uint EPOLLEXCLUSIVE = 1u << 28;
    public const uint EPOLLRDHUP = 0x2000;
    public const uint EPOLLET = 1u << 31;

    public const int SOCK_NONBLOCK = 0x800;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int MSG_NOSIGNAL = 0x4000;
    public const int SHUT_WR = 1;
    public const int SHUT_RDWR = 2;
    public const int SOL_SOCKET = 1;
    public const int SO_LINGER = 13;
    public const int IPPROTO_TCP = 6;
    public const int TCP_NODELAY = 1;
    public const int EFD_CLOEXEC = 0x80000;
    public const int EFD_NONBLOCK = 0x800;

    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int ENOMEM = 12;
    public const int ENFILE = 23;
    public const int EMFILE = 24;
    public const int EPIPE = 32;
    public const int EPROTO = 71;
    public const int ECONNABORTED = 103;
    public const int ECONNRESET = 104;
    public const int ENOBUFS = 105;

    /// <summary>struct epoll_event: packed on x86-64 (12 bytes), which is the only architecture this engine runs on.</summary>
    [StructLayout(LayoutKind.Sequential, Pack = 4)]
    public struct EpollEvent
    {
        public uint Events;
        public ulong Data;
    }

    /// <summary>Whether this process can use the engine: Linux on x86-64 (epoll_event's layout differs elsewhere).</summary>
    public static bool IsSupported => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64;

    [LibraryImport("libc", EntryPoint = "epoll_create1", SetLastError = true)]
    public static partial int EpollCreate1(int flags);

    [LibraryImport("libc", EntryPoint = "epoll_ctl", SetLastError = true)]
    public static partial int EpollCtl(int epfd, int op, int fd, EpollEvent* ev);

    [LibraryImport("libc", EntryPoint = "epoll_wait", SetLastError = true)]
    public static partial int EpollWait(int epfd, EpollEvent* events, int maxEvents, int timeoutMs);

    public const int ENOSYS = 38;

    [StructLayout(LayoutKind.Sequential)]
    public struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    /// <summary>epoll_wait with a nanosecond timeout (Linux 5.11, glibc 2.35); ENOSYS or a missing symbol where older.</summary>
    [LibraryImport("libc", EntryPoint = "epoll_pwait2", SetLastError = true)]
    public static partial int EpollPwait2(int epfd, EpollEvent* events, int maxEvents, Timespec* timeout, void* sigmask);

    [LibraryImport("libc", EntryPoint = "accept4", SetLastError = true)]
    public static partial int Accept4(int fd, byte* address, uint* addressLength, int flags);

    // recv, send and epoll_wait with a zero timeout are the calls of every message. On the engine's
    // non-blocking descriptors they never wait, so they are called without the runtime's GC transition
    // ([SuppressGCTransition]: measured at ~2 % of the server's CPU with 64-byte messages, the transition
    // and errno capture of SetLastError), and report a failure as -errno, read right after the call.
    // Never use them on a descriptor that may block: a GC would wait for the call to return.

    [LibraryImport("libc", EntryPoint = "recv")]
    [SuppressGCTransition]
    private static partial nint RecvRaw(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "send")]
    [SuppressGCTransition]
    private static partial nint SendRaw(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "epoll_wait")]
    [SuppressGCTransition]
    private static partial int EpollPollRaw(int epfd, EpollEvent* events, int maxEvents, int timeoutMs);

    /// <summary>recv(2) on a non-blocking socket: the bytes read, 0 at the peer's FIN, or -errno.</summary>
    public static nint Recv(int fd, byte* buffer, nuint length, int flags)
    {
        nint n = RecvRaw(fd, buffer, length, flags);
        return n >= 0 ? n : -Marshal.GetLastSystemError();
    }

    /// <summary>send(2) on a non-blocking socket: the bytes sent, or -errno.</summary>
    public static nint Send(int fd, byte* buffer, nuint length, int flags)
    {
        nint n = SendRaw(fd, buffer, length, flags);
        return n >= 0 ? n : -Marshal.GetLastSystemError();
    }

    /// <summary>epoll_wait(2) that does not wait (timeout 0): the number of events, or -errno.</summary>
    public static int EpollPoll(int epfd, EpollEvent* events, int maxEvents)
    {
        int n = EpollPollRaw(epfd, events, maxEvents, 0);
        return n >= 0 ? n : -Marshal.GetLastSystemError();
    }

    [LibraryImport("libc", EntryPoint = "shutdown", SetLastError = true)]
    public static partial int Shutdown(int fd, int how);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    public static partial int SetSockOpt(int fd, int level, int name, void* value, uint length);

    private const int FIONREAD = 0x541B;

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int Ioctl(int fd, nuint request, int* value);

    private const int TCP_INFO = 11;
    private const int TcpInfoBytesAckedOffset = 120; // struct tcp_info: tcpi_bytes_acked (Linux 4.1+)

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    private static partial int GetSockOpt(int fd, int level, int name, void* value, uint* length);

    /// <summary>Bytes of ours the TCP peer has acknowledged so far (TCP_INFO); -1 where it cannot tell (not TCP, old kernel).</summary>
    public static long BytesAcked(int fd)
    {
        if (!IsSupported)
        {
            return -1;
        }

        byte* info = stackalloc byte[256];
        uint length = 256;
        return GetSockOpt(fd, IPPROTO_TCP, TCP_INFO, info, &length) == 0 && length >= TcpInfoBytesAckedOffset + 8
            ? *(long*)(info + TcpInfoBytesAckedOffset)
            : -1;
    }

    private const int TIOCOUTQ = 0x5411;

    /// <summary>Bytes in the socket's send queue not yet acknowledged by the peer (SIOCOUTQ); 0 when it cannot tell.</summary>
    public static int BytesUnsent(int fd)
    {
        int count = 0;
        return IsSupported && Ioctl(fd, TIOCOUTQ, &count) == 0 ? count : 0;
    }

    /// <summary>Bytes waiting to be read (FIONREAD); 0 when it cannot tell.</summary>
    public static int BytesReadable(int fd)
    {
        int count = 0;
        return IsSupported && Ioctl(fd, FIONREAD, &count) == 0 ? count : 0;
    }

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initial, int flags);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, void* buffer, nuint length);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, void* buffer, nuint length);

    public static int LastError => Marshal.GetLastPInvokeError();

    /// <summary>epoll_ctl with the event built here: <paramref name="token"/> comes back as the event's data.</summary>
    public static int EpollControl(int epfd, int op, int fd, uint events, ulong token)
    {
        var e = new EpollEvent { Events = events, Data = token };
        return EpollCtl(epfd, op, fd, &e);
    }

    /// <summary>errno as .NET's SocketError, for close reasons and log lines (the runtime's SocketErrorPal table, the few that occur here).</summary>
    public static SocketError ToSocketError(int errno) => errno switch
    {
        ECONNRESET => SocketError.ConnectionReset,
        111 => SocketError.ConnectionRefused,
        EPIPE => SocketError.Shutdown,
        ECONNABORTED => SocketError.ConnectionAborted,
        110 => SocketError.TimedOut,
        113 => SocketError.HostUnreachable,
        101 => SocketError.NetworkUnreachable,
        100 => SocketError.NetworkDown,
        ENOBUFS => SocketError.NoBufferSpaceAvailable,
        ENOMEM => SocketError.NoBufferSpaceAvailable,
        EMFILE or ENFILE => SocketError.TooManyOpenSockets,
        EAGAIN => SocketError.WouldBlock,
        EINTR => SocketError.Interrupted,
        107 => SocketError.NotConnected,
        _ => SocketError.SocketError,
    };

    public static void SetNoDelay(int fd)
    {
        int one = 1;
        SetSockOpt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int));
    }

    private const int SO_OOBINLINE = 10;

    /// <summary>
    /// SO_OOBINLINE: a TCP urgent byte (telnet's Synch) stays in the stream, so it is echoed like every other
    /// byte instead of being set aside where nobody reads it.
    /// </summary>
    public static void SetUrgentInline(int fd)
    {
        int one = 1;
        SetSockOpt(fd, SOL_SOCKET, SO_OOBINLINE, &one, sizeof(int));
    }

    /// <summary>SO_LINGER {on, 0}: the following close() sends an RST and discards what is unsent.</summary>
    public static void SetAbortiveClose(int fd)
    {
        Span<int> linger = [1, 0];
        fixed (int* value = linger)
        {
            SetSockOpt(fd, SOL_SOCKET, SO_LINGER, value, sizeof(int) * 2);
        }
    }
}

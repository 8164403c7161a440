using System.Runtime.InteropServices;

namespace EchoKit.Internal.Datagrams;

/// <summary>
/// The Linux calls of the batched datagram loops (recvmmsg/sendmmsg), the socket options they set, and the
/// structures they take (x86-64 layouts, like the epoll engine's: <see cref="Epoll.Native.IsSupported"/>).
/// </summary>
internal static unsafe partial class DatagramNative
{
    public const int MSG_TRUNC = 0x20;
    public const int MSG_DONTWAIT = 0x40;
    public const int MSG_WAITFORONE = 0x10000;
    public const int SHUT_RD = 0;

    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int EMSGSIZE = 90;
    public const int ENOBUFS = 105;

    private const int SOL_SOCKET = 1;
    private const int SO_SNDBUF = 7;
    private const int SO_RCVBUF = 8;
    private const int SO_REUSEPORT = 15;
    private const int SO_SNDBUFFORCE = 32;
    private const int SO_RCVBUFFORCE = 33;
    public const int SO_RXQ_OVFL = 40;
    private const int SO_MEMINFO = 55;
    private const int SK_MEMINFO_DROPS = 8;

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public byte* Base;
        public nuint Length;
    }

    /// <summary>struct mmsghdr: a msghdr (56 bytes with its tail padding) and the length the call moved.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 64)]
    public struct MMsgHdr
    {
        [FieldOffset(0)] public byte* Name;
        [FieldOffset(8)] public uint NameLength;
        [FieldOffset(16)] public IoVec* Iov;
        [FieldOffset(24)] public nuint IovLength;
        [FieldOffset(32)] public byte* Control;
        [FieldOffset(40)] public nuint ControlLength;
        [FieldOffset(48)] public int Flags;
        [FieldOffset(56)] public uint Length;
    }

    /// <summary>struct cmsghdr's fixed part; the data follows at 16 bytes.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct CMsgHdr
    {
        public nuint Length;
        public int Level;
        public int Type;
    }

    /// <summary>CMSG_SPACE(4): one control message carrying a 32-bit value.</summary>
    public const int ControlSpace = 24;

    [LibraryImport("libc", EntryPoint = "recvmmsg", SetLastError = true)]
    public static partial int RecvMmsg(int fd, MMsgHdr* messages, uint count, int flags, void* timeout);

    // recvmmsg and sendmmsg called with MSG_DONTWAIT never wait, so these forms skip the runtime's GC transition
    // (as the epoll engine's recv and send do) and reports a failure as -errno, read right after the call.
    [LibraryImport("libc", EntryPoint = "sendmmsg")]
    [SuppressGCTransition]
    private static partial int SendMmsgRaw(int fd, MMsgHdr* messages, uint count, int flags);

    [LibraryImport("libc", EntryPoint = "recvmmsg")]
    [SuppressGCTransition]
    private static partial int RecvMmsgRaw(int fd, MMsgHdr* messages, uint count, int flags, void* timeout);

    /// <summary>recvmmsg(2) that does not wait (MSG_DONTWAIT): the datagrams received, or -errno.</summary>
    public static int RecvMmsgNow(int fd, MMsgHdr* messages, uint count)
    {
        int n = RecvMmsgRaw(fd, messages, count, MSG_DONTWAIT, null);
        return n >= 0 ? n : -Marshal.GetLastSystemError();
    }

    /// <summary>sendmmsg(2) that does not wait: the datagrams sent, or -errno.</summary>
    public static int SendMmsgNow(int fd, MMsgHdr* messages, uint count)
    {
        int n = SendMmsgRaw(fd, messages, count, MSG_DONTWAIT);
        return n >= 0 ? n : -Marshal.GetLastSystemError();
    }

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    private static partial int SetSockOpt(int fd, int level, int name, void* value, uint length);

    [LibraryImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    private static partial int GetSockOpt(int fd, int level, int name, void* value, uint* length);

    [LibraryImport("libc", EntryPoint = "shutdown", SetLastError = true)]
    public static partial int Shutdown(int fd, int how);

    public static int LastError => Marshal.GetLastPInvokeError();

    /// <summary>setsockopt(SOL_SOCKET, name, int); 0 or errno.</summary>
    private static int SetInt(int fd, int name, int value) =>
        SetSockOpt(fd, SOL_SOCKET, name, &value, sizeof(int)) == 0 ? 0 : LastError;

    private static int GetInt(int fd, int name)
    {
        int value = 0;
        uint length = sizeof(int);
        return GetSockOpt(fd, SOL_SOCKET, name, &value, &length) == 0 ? value : -1;
    }

    /// <summary>SO_REUSEPORT on a socket not yet bound; 0 or errno.</summary>
    public static int SetReusePort(int fd) => SetInt(fd, SO_REUSEPORT, 1);

    /// <summary>SO_RXQ_OVFL: every received datagram carries the socket's drop count so far (when not 0).</summary>
    public static int SetDropCounting(int fd) => SetInt(fd, SO_RXQ_OVFL, 1);

    /// <summary>
    /// Asks for a receive or send buffer of <paramref name="bytes"/>: SO_RCVBUFFORCE/SO_SNDBUFFORCE first (they
    /// pass net.core.rmem_max/wmem_max and work with CAP_NET_ADMIN), else the capped option. Returns what the
    /// kernel gave, as it counts it (twice the bytes asked, for its bookkeeping), or -1.
    /// </summary>
    public static int SetBuffer(int fd, bool receive, int bytes)
    {
        if (SetInt(fd, receive ? SO_RCVBUFFORCE : SO_SNDBUFFORCE, bytes) != 0)
        {
            SetInt(fd, receive ? SO_RCVBUF : SO_SNDBUF, bytes);
        }

        return GetInt(fd, receive ? SO_RCVBUF : SO_SNDBUF);
    }

    /// <summary>The buffer the kernel gives a socket now (SO_RCVBUF or SO_SNDBUF), or -1.</summary>
    public static int Buffer(int fd, bool receive) => GetInt(fd, receive ? SO_RCVBUF : SO_SNDBUF);

    /// <summary>The datagrams the kernel has dropped at this socket so far (SO_MEMINFO), or -1.</summary>
    public static long KernelDrops(int fd)
    {
        uint* info = stackalloc uint[16];
        uint length = 16 * sizeof(uint);
        return GetSockOpt(fd, SOL_SOCKET, SO_MEMINFO, info, &length) == 0 && length > SK_MEMINFO_DROPS * sizeof(uint)
            ? info[SK_MEMINFO_DROPS]
            : -1;
    }
}

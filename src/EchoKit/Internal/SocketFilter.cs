using System.Runtime.InteropServices;

namespace EchoKit.Internal;

/// <summary>
/// The two classic BPF programs the server attaches to its sockets: one steers a SO_REUSEPORT group's datagrams
/// by CPU, one lets a TCP listener that is about to close finish the handshakes under way but start no new one.
/// </summary>
internal static unsafe partial class SocketFilter
{
    private const int SOL_SOCKET = 1;
    private const int SO_ATTACH_FILTER = 26;
    private const int SO_ATTACH_REUSEPORT_CBPF = 51;

    [StructLayout(LayoutKind.Sequential)]
    private struct SockFilter
    {
        public ushort Code;
        public byte JumpTrue;
        public byte JumpFalse;
        public uint K;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct SockFprog
    {
        public ushort Length;
        public SockFilter* Filter;
    }

    private const ushort BPF_LD_W_ABS = 0x00 | 0x00 | 0x20;
    private const ushort BPF_LD_B_ABS = 0x00 | 0x10 | 0x20;
    private const ushort BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00;
    private const ushort BPF_JSET_K = 0x05 | 0x40 | 0x00;
    private const ushort BPF_RET_A = 0x06 | 0x10;
    private const ushort BPF_RET_K = 0x06 | 0x00;
    private const uint SKF_AD_OFF = unchecked((uint)-0x1000);
    private const uint SKF_AD_CPU = 36;
    private const uint TcpFlagsOffset = 13;
    private const uint TcpSyn = 0x02;
    private const uint TcpAck = 0x10;

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    private static partial int SetSockOpt(int fd, int level, int name, void* value, uint length);

    /// <summary>
    /// Steers each datagram of a SO_REUSEPORT group to the socket at index (CPU that received it) % <paramref name="sockets"/>:
    /// a flow stays on the loop of the CPU that takes its packets, and no index past our own sockets is ever
    /// chosen, so a socket that some other process of the same user added to the group later gets nothing.
    /// 0 or errno.
    /// </summary>
    public static int SteerByCpu(int fd, int sockets)
    {
        SockFilter* program = stackalloc SockFilter[3];
        program[0] = new SockFilter { Code = BPF_LD_W_ABS, K = SKF_AD_OFF + SKF_AD_CPU };
        program[1] = new SockFilter { Code = BPF_ALU_MOD_K, K = (uint)sockets };
        program[2] = new SockFilter { Code = BPF_RET_A };
        var fprog = new SockFprog { Length = 3, Filter = program };
        return SetSockOpt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &fprog, (uint)sizeof(SockFprog)) == 0 ? 0 : Marshal.GetLastPInvokeError();
    }

    /// <summary>
    /// On a listening TCP socket: drops every segment that opens a handshake (SYN without ACK) and passes the
    /// rest, so the handshakes under way complete into the backlog, where they can be accepted and served, and no
    /// new one starts: the client's SYN is retried a second later and meets the closed port (or the next
    /// process on it). A listener filter sees each segment from its TCP header on (tcp_filter). 0 or errno.
    /// </summary>
    public static int HoldNewHandshakes(int fd)
    {
        SockFilter* program = stackalloc SockFilter[5];
        program[0] = new SockFilter { Code = BPF_LD_B_ABS, K = TcpFlagsOffset };
        program[1] = new SockFilter { Code = BPF_JSET_K, JumpTrue = 1, K = TcpAck }; // any ACK: pass (3)
        program[2] = new SockFilter { Code = BPF_JSET_K, JumpTrue = 1, K = TcpSyn }; // a bare SYN: drop (4)
        program[3] = new SockFilter { Code = BPF_RET_K, K = uint.MaxValue };
        program[4] = new SockFilter { Code = BPF_RET_K, K = 0 };
        var fprog = new SockFprog { Length = 5, Filter = program };
        return SetSockOpt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &fprog, (uint)sizeof(SockFprog)) == 0 ? 0 : Marshal.GetLastPInvokeError();
    }
}

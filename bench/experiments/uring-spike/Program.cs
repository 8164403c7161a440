// Spike: a bare io_uring echo server (no greeting, no limits), to learn whether fewer system calls per
// message beat the C epoll baseline on this machine. usage: uring PORT
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Threading;

unsafe
{
    int port = int.Parse(args[0]);
    var listener = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp);
    listener.DualMode = true;
    listener.SetRawSocketOption(1, 2, BitConverter.GetBytes(1));
    listener.Bind(new IPEndPoint(IPAddress.IPv6Any, port));
    listener.Listen(4096);
    int lfd = (int)listener.Handle;

    const uint Entries = 4096;
    var p = new byte[120];
    BitConverter.TryWriteBytes(p.AsSpan(8), (uint)((1 << 12) | (1 << 13))); // SINGLE_ISSUER | DEFER_TASKRUN
    int ring;
    fixed (byte* pp = p) ring = (int)N.syscall(425, (nint)Entries, (nint)pp, 0, 0, 0, 0);
    if (ring < 0) { Console.Error.WriteLine($"io_uring_setup failed {Marshal.GetLastPInvokeError()}"); return 1; }
    uint U32(int o) => BitConverter.ToUInt32(p, o);
    uint sqEntries = U32(0), cqEntries = U32(4), features = U32(20);
    // sq_off at 40: head, tail, ring_mask, ring_entries, flags, dropped, array
    uint sqHeadOff = U32(40), sqTailOff = U32(44), sqMaskOff = U32(48), sqArrayOff = U32(64);
    // cq_off at 80: head, tail, ring_mask, ring_entries, overflow, cqes
    uint cqHeadOff = U32(80), cqTailOff = U32(84), cqMaskOff = U32(88), cqesOff = U32(100);
    nuint sqSize = sqArrayOff + sqEntries * 4, cqSize = cqesOff + cqEntries * 16;
    nuint size = sqSize > cqSize ? sqSize : cqSize;
    byte* sq = (byte*)N.mmap(null, size, 3, 0x01 | 0x8000, ring, 0);
    byte* cq = sq; // IORING_FEAT_SINGLE_MMAP
    if ((features & 1) == 0) { Console.Error.WriteLine("no single mmap"); return 1; }
    byte* sqes = (byte*)N.mmap(null, sqEntries * 64, 3, 0x01 | 0x8000, ring, 0x10000000);
    uint* sqHead = (uint*)(sq + sqHeadOff), sqTail = (uint*)(sq + sqTailOff), sqArray = (uint*)(sq + sqArrayOff);
    uint sqMask = *(uint*)(sq + sqMaskOff);
    uint* cqHead = (uint*)(cq + cqHeadOff), cqTail = (uint*)(cq + cqTailOff);
    uint cqMask = *(uint*)(cq + cqMaskOff);
    byte* cqes = cq + cqesOff;

    uint tail = *sqTail; uint pending = 0;
    byte* Sqe()
    {
        uint idx = tail & sqMask;
        byte* e = sqes + idx * 64;
        new Span<byte>(e, 64).Clear();
        sqArray[idx] = idx;
        tail++; pending++;
        return e;
    }
    void Prep(byte op, int fd, void* addr, uint len, ulong user, ushort ioprio = 0, uint opFlags = 0)
    {
        byte* e = Sqe();
        e[0] = op; *(ushort*)(e + 2) = ioprio; *(int*)(e + 4) = fd; *(ulong*)(e + 16) = (ulong)addr; *(uint*)(e + 24) = len;
        *(uint*)(e + 28) = opFlags; *(ulong*)(e + 32) = user;
    }
    const byte OpAccept = 13, OpSend = 26, OpRecv = 27;
    const int BufSize = 64 * 1024;
    var buffers = new Dictionary<int, nint>();
    // user_data: kind in the top byte (1 accept, 2 recv, 3 send), fd below
    Prep(OpAccept, lfd, null, 0, 1UL << 56, ioprio: 1, opFlags: 0x800 | 0x80000); // multishot, SOCK_NONBLOCK|CLOEXEC
    Console.Error.WriteLine($"uring: listening on port {port}");
    while (true)
    {
        Volatile.Write(ref *sqTail, tail);
        int r = (int)N.syscall(426, ring, (nint)pending, 1, 1, 0, 0);
        pending = 0;
        if (r < 0) { int err = Marshal.GetLastPInvokeError(); if (err == 4) continue; Console.Error.WriteLine($"enter {err}"); return 1; }
        uint head = *cqHead;
        uint ctail = Volatile.Read(ref *cqTail);
        while (head != ctail)
        {
            byte* c = cqes + (head & cqMask) * 16;
            ulong user = *(ulong*)c; int res = *(int*)(c + 8); uint flags = *(uint*)(c + 12);
            head++;
            int kind = (int)(user >> 56); int fd = (int)(user & 0xFFFFFFFF);
            if (kind == 1)
            {
                if (res >= 0)
                {
                    int one = 1; N.setsockopt(res, 6, 1, &one, 4);
                    nint buf = (nint)NativeMemory.Alloc(BufSize);
                    buffers[res] = buf;
                    Prep(OpRecv, res, (void*)buf, BufSize, (2UL << 56) | (uint)res);
                }
                if ((flags & 2) == 0) Prep(OpAccept, lfd, null, 0, 1UL << 56, ioprio: 1, opFlags: 0x800 | 0x80000);
            }
            else if (kind == 2)
            {
                nint buf = buffers[fd];
                if (res <= 0) { N.close(fd); NativeMemory.Free((void*)buf); buffers.Remove(fd); }
                else Prep(OpSend, fd, (void*)buf, (uint)res, (3UL << 56) | (uint)fd, opFlags: 0x4000 /* MSG_NOSIGNAL */);
            }
            else if (kind == 3)
            {
                nint buf = buffers[fd];
                if (res < 0) { N.close(fd); NativeMemory.Free((void*)buf); buffers.Remove(fd); }
                else Prep(OpRecv, fd, (void*)buf, BufSize, (2UL << 56) | (uint)fd);
            }
        }
        Volatile.Write(ref *cqHead, head);
    }
}

static unsafe class N
{
    [DllImport("libc", SetLastError = true)] public static extern nint syscall(nint n, nint a, nint b, nint c, nint d, nint e, nint f);
    [DllImport("libc", SetLastError = true)] public static extern void* mmap(void* addr, nuint len, int prot, int flags, int fd, long off);
    [DllImport("libc")] public static extern int setsockopt(int fd, int level, int name, void* v, uint len);
    [DllImport("libc")] public static extern int close(int fd);
}

// Spike 2: a bare io_uring echo server with multishot recv into a provided-buffer ring (one poll stays
// armed per socket, as with epoll) and SINGLE_ISSUER + DEFER_TASKRUN: one io_uring_enter per batch, no
// system call per message. No greeting, no limits, and a short send would lose bytes: a measurement only.
// usage: uring-multishot PORT
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Threading;

unsafe
{
    int port = int.Parse(args[0]);
    var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
    listener.SetRawSocketOption(1, 2, BitConverter.GetBytes(1));
    listener.Bind(new IPEndPoint(IPAddress.Any, port));
    listener.Listen(4096);
    int lfd = (int)listener.Handle;

    const uint Entries = 4096;
    var p = new byte[120];
    BitConverter.TryWriteBytes(p.AsSpan(8), (uint)((1 << 12) | (1 << 13))); // SINGLE_ISSUER | DEFER_TASKRUN
    BitConverter.TryWriteBytes(p.AsSpan(4), (uint)(Entries * 4));
    BitConverter.TryWriteBytes(p.AsSpan(8), (uint)((1 << 12) | (1 << 13) | (1 << 4))); // + CQSIZE
    int ring;
    fixed (byte* pp = p) ring = (int)N.syscall(425, (nint)Entries, (nint)pp, 0, 0, 0, 0);
    if (ring < 0) { Console.Error.WriteLine($"io_uring_setup failed {Marshal.GetLastPInvokeError()}"); return 1; }
    uint U32(int o) => BitConverter.ToUInt32(p, o);
    uint sqEntries = U32(0), cqEntries = U32(4), features = U32(20);
    uint sqHeadOff = U32(40), sqTailOff = U32(44), sqMaskOff = U32(48), sqArrayOff = U32(64);
    uint cqHeadOff = U32(80), cqTailOff = U32(84), cqMaskOff = U32(88), cqesOff = U32(100);
    nuint sqSize = sqArrayOff + sqEntries * 4, cqSize = cqesOff + cqEntries * 16;
    nuint size = sqSize > cqSize ? sqSize : cqSize;
    byte* sq = (byte*)N.mmap(null, size, 3, 0x01 | 0x8000, ring, 0);
    byte* cq = sq;
    if ((features & 1) == 0) { Console.Error.WriteLine("no single mmap"); return 1; }
    byte* sqes = (byte*)N.mmap(null, sqEntries * 64, 3, 0x01 | 0x8000, ring, 0x10000000);
    uint* sqTail = (uint*)(sq + sqTailOff), sqArray = (uint*)(sq + sqArrayOff);
    uint sqMask = *(uint*)(sq + sqMaskOff);
    uint* cqHead = (uint*)(cq + cqHeadOff), cqTail = (uint*)(cq + cqTailOff);
    uint cqMask = *(uint*)(cq + cqMaskOff);
    byte* cqes = cq + cqesOff;

    // provided buffer ring, group 0
    const int NBuf = 4096, BufSize = 16 * 1024;
    byte* bring = (byte*)NativeMemory.AlignedAlloc(NBuf * 16, 4096);
    new Span<byte>(bring, NBuf * 16).Clear();
    byte* bufmem = (byte*)NativeMemory.AlignedAlloc((nuint)NBuf * BufSize, 4096);
    ushort btail = 0;
    void BufAdd(int bid)
    {
        byte* e = bring + (btail & (NBuf - 1)) * 16;
        *(ulong*)e = (ulong)(bufmem + (long)bid * BufSize); *(uint*)(e + 8) = BufSize; *(ushort*)(e + 12) = (ushort)bid;
        btail++;
    }
    void BufPublish() => Volatile.Write(ref *(ushort*)(bring + 14), btail);
    for (int i = 0; i < NBuf; i++) BufAdd(i);
    BufPublish();
    var reg = stackalloc byte[40];
    new Span<byte>(reg, 40).Clear();
    *(ulong*)reg = (ulong)bring; *(uint*)(reg + 8) = NBuf; *(ushort*)(reg + 12) = 0;
    if (N.syscall(427, ring, 22, (nint)reg, 1, 0, 0) < 0) { Console.Error.WriteLine($"pbuf ring register failed {Marshal.GetLastPInvokeError()}"); return 1; }

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
    void Prep(byte op, int fd, void* addr, uint len, ulong user, ushort ioprio = 0, uint opFlags = 0, byte flags = 0)
    {
        byte* e = Sqe();
        e[0] = op; e[1] = flags; *(ushort*)(e + 2) = ioprio; *(int*)(e + 4) = fd; *(ulong*)(e + 16) = (ulong)addr; *(uint*)(e + 24) = len;
        *(uint*)(e + 28) = opFlags; *(ulong*)(e + 32) = user;
    }
    const byte OpAccept = 13, OpSend = 26, OpRecv = 27;
    void ArmRecv(int fd) => Prep(OpRecv, fd, null, 0, (2UL << 56) | (uint)fd, ioprio: 2 /* RECV_MULTISHOT */, flags: 0x20 /* BUFFER_SELECT, group 0 */);
    Prep(OpAccept, lfd, null, 0, 1UL << 56, ioprio: 1, opFlags: 0x800 | 0x80000);
    Console.Error.WriteLine($"uring2: listening on port {port}");
    bool published = false;
    while (true)
    {
        if (published) { BufPublish(); published = false; }
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
            int kind = (int)(user >> 56); int fd = (int)(user & 0xFFFFFF); 
            if (kind == 1)
            {
                if (res >= 0)
                {
                    int one = 1; N.setsockopt(res, 6, 1, &one, 4);
                    ArmRecv(res);
                }
                if ((flags & 2) == 0) Prep(OpAccept, lfd, null, 0, 1UL << 56, ioprio: 1, opFlags: 0x800 | 0x80000);
            }
            else if (kind == 2)
            {
                bool more = (flags & 2) != 0;
                if (res > 0 && (flags & 1) != 0)
                {
                    int bid = (int)(flags >> 16);
                    Prep(OpSend, fd, bufmem + (long)bid * BufSize, (uint)res, (3UL << 56) | ((ulong)bid << 24) | (uint)fd, opFlags: 0x4000);
                    if (!more) ArmRecv(fd);
                }
                else if (res == -105 /* ENOBUFS */) { ArmRecv(fd); }
                else if (res <= 0 && !more) { N.close(fd); }
            }
            else if (kind == 3)
            {
                int bid = (int)((user >> 24) & 0xFFFF);
                BufAdd(bid); published = true; // (a short send would lose bytes: spike only)
                if (res < 0) { /* recv side will see the error */ }
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

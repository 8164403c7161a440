using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using static EchoKit.Internal.Datagrams.DatagramNative;

namespace EchoKit.Internal.Datagrams;

/// <summary>
/// One thread serving one datagram socket in batches, the shape of the C reference (shared/bench udp_mmsg):
/// a blocking <c>recvmmsg(MSG_WAITFORONE)</c> takes whatever has arrived (at least one datagram, up to the
/// batch: the queue is drained per wake-up, 64 at a time), <see cref="DatagramPolicy"/> decides for each, and
/// one <c>sendmmsg</c> sends every answered datagram back to its sender from the buffer it arrived in. Nothing
/// is allocated per datagram: buffers, headers, addresses and control space are set up once.
///
/// Each receive also brings the socket's drop count (SO_RXQ_OVFL) when the kernel has dropped any for a full
/// queue; the increase goes to the policy's count and log. Replies are sent without waiting (MSG_DONTWAIT):
/// a full send buffer drops them, counted, rather than stalling the loop. <see cref="Stop"/> wakes a loop
/// blocked in recvmmsg with shutdown(SHUT_RD), which Linux allows on an unconnected datagram socket (it
/// answers ENOTCONN but wakes every receiver).
/// </summary>
internal sealed unsafe class BatchedDatagramLoop
{
    private const int MaxBatch = 64;
    private const int BatchBytes = 4 << 20; // a batch of the largest UDP datagrams, as udp_mmsg; fewer slots for larger Unix datagrams
    private const int NameBytes = 128; // sockaddr_storage: any sockaddr_in, sockaddr_in6 or sockaddr_un
    private const int ECONNREFUSED = 111;
    private const int EHOSTUNREACH = 113;
    private const int ENETUNREACH = 101;

    private readonly Socket _socket;
    private readonly DatagramPolicy _policy;
    private readonly IPayloadSink? _sink;
    private readonly ILogger _logger;
    private readonly int _index;
    private readonly int _batch;
    private readonly int _stride;
    private readonly Thread _thread;
    private volatile bool _closed;
    private long _echoed;
    private uint _kernelDropsSeen;

    public BatchedDatagramLoop(int index, Socket socket, DatagramPolicy policy, IPayloadSink? sink, ILogger logger)
    {
        _index = index;
        _socket = socket;
        _policy = policy;
        _sink = sink;
        _logger = logger;
        _stride = (policy.BufferSize + 63) & ~63;
        _batch = Math.Clamp(BatchBytes / _stride, 1, MaxBatch);
        _thread = new Thread(Run) { IsBackground = true, Name = $"echokit datagram loop {index}" };
    }

    public long Echoed => Volatile.Read(ref _echoed);

    public void Start() => _thread.Start();

    /// <summary>Stops receiving and waits (up to <paramref name="wait"/>) for the loop to finish its batch.</summary>
    public bool Stop(TimeSpan wait)
    {
        _closed = true;
        Shutdown((int)_socket.Handle, SHUT_RD);
        return _thread.Join(wait);
    }

    private void Run()
    {
        bool held = false;
        _socket.SafeHandle.DangerousAddRef(ref held); // the descriptor stays ours until this thread is done with it
        var buffers = GC.AllocateUninitializedArray<byte>(_batch * _stride, pinned: true);
        var received = (MMsgHdr*)NativeMemory.AllocZeroed((nuint)(_batch * sizeof(MMsgHdr)));
        var replies = (MMsgHdr*)NativeMemory.AllocZeroed((nuint)(_batch * sizeof(MMsgHdr)));
        var iov = (IoVec*)NativeMemory.AllocZeroed((nuint)(_batch * sizeof(IoVec)));
        var names = (byte*)NativeMemory.AllocZeroed((nuint)(_batch * NameBytes));
        var control = (byte*)NativeMemory.AllocZeroed((nuint)(_batch * ControlSpace));
        try
        {
            fixed (byte* data = buffers)
            {
                for (int i = 0; i < _batch; i++)
                {
                    iov[i].Base = data + (long)i * _stride;
                    received[i].Name = names + i * NameBytes;
                    received[i].Iov = &iov[i];
                    received[i].IovLength = 1;
                    received[i].Control = control + i * ControlSpace;
                }

                Serve((int)_socket.Handle, buffers, data, received, replies, iov, _batch);
            }
        }
        catch (Exception e)
        {
            Log.LoopFailed(_logger, _index, $"{_policy.Transport}: {e.Message}");
        }
        finally
        {
            NativeMemory.Free(received);
            NativeMemory.Free(replies);
            NativeMemory.Free(iov);
            NativeMemory.Free(names);
            NativeMemory.Free(control);
            if (held)
            {
                _socket.SafeHandle.DangerousRelease();
            }
        }
    }

    private void Serve(int fd, byte[] buffers, byte* data, MMsgHdr* received, MMsgHdr* replies, IoVec* iov, int batch)
    {
        int used = batch; // entries the last call wrote into, to be made ready again
        while (!_closed)
        {
            for (int i = 0; i < used; i++)
            {
                iov[i].Length = (nuint)_stride;
                received[i].NameLength = NameBytes;
                received[i].ControlLength = ControlSpace;
                received[i].Flags = 0;
            }

            int count = RecvMmsg(fd, received, (uint)batch, MSG_WAITFORONE, null);
            if (_closed)
            {
                return;
            }

            if (count < 0)
            {
                used = 0;
                int errno = LastError;
                if (errno is EINTR or EAGAIN or ECONNREFUSED or EHOSTUNREACH or ENETUNREACH)
                {
                    continue; // an ICMP error about an earlier reply: not a reason to stop receiving
                }

                Log.LoopFailed(_logger, _index, $"{_policy.Transport} receive: {Describe(errno)}; retrying in 10 ms");
                Thread.Sleep(10); // not a spin while the kernel keeps failing (ENOMEM)
                continue;
            }

            used = count;
            int answering = 0;
            for (int i = 0; i < count; i++)
            {
                ref var message = ref received[i];
                CountKernelDrops(ref message);
                var sender = new ReadOnlySpan<byte>(message.Name, (int)message.NameLength);
                if (_policy.ShouldAnswer(sender, (int)message.Length, (message.Flags & MSG_TRUNC) != 0))
                {
                    iov[i].Length = message.Length; // the echo: the same bytes, back to where they came from
                    ref var reply = ref replies[answering++];
                    reply.Name = message.Name;
                    reply.NameLength = message.NameLength;
                    reply.Iov = message.Iov;
                    reply.IovLength = 1;
                    reply.Flags = 0;
                }
            }

            if (answering > 0)
            {
                if (_sink is not null)
                {
                    // Before the replies: a client that sends its next datagram once it has the reply finds
                    // this one on stdout before the next, whichever loop the next one reaches.
                    WriteToSink(buffers, data, replies, answering);
                }

                var dump = _policy.Dump;
                if (dump is not null)
                {
                    Dump(dump, replies, answering, inbound: true);
                }

                Reply(fd, replies, answering);
                if (dump is not null)
                {
                    Dump(dump, replies, answering, inbound: false);
                }
            }
        }
    }

    /// <summary>One sendmmsg for the batch; a datagram the kernel refuses is skipped (marked in its Flags), the rest go on.</summary>
    private void Reply(int fd, MMsgHdr* replies, int count)
    {
        int done = 0;
        long echoed = 0;
        while (done < count)
        {
            int sent = SendMmsgNow(fd, replies + done, (uint)(count - done));
            if (sent > 0)
            {
                done += sent;
                echoed += sent;
                continue;
            }

            int errno = -sent;
            if (errno == EINTR)
            {
                continue;
            }

            if (errno is EAGAIN or ENOBUFS)
            {
                _policy.RepliesNotSent(count - done); // the send buffer is full: UDP may drop, but we count it
                for (int i = done; i < count; i++)
                {
                    replies[i].Flags = 1;
                }

                break;
            }

            if (errno == EMSGSIZE)
            {
                _policy.ReplyTooLarge();
            }

            replies[done++].Flags = 1; // unreachable sender, or an ICMP error of an earlier reply surfacing here
        }

        Volatile.Write(ref _echoed, _echoed + echoed); // this thread is the only writer
    }

    /// <summary>The batch's datagrams (inbound), or the replies the kernel took (outbound: the ones not marked in Flags).</summary>
    private static void Dump(HexDump dump, MMsgHdr* replies, int count, bool inbound)
    {
        for (int i = 0; i < count; i++)
        {
            if (inbound || replies[i].Flags == 0)
            {
                dump.RecordDatagram(new ReadOnlySpan<byte>(replies[i].Name, (int)replies[i].NameLength), inbound,
                    new ReadOnlySpan<byte>(replies[i].Iov->Base, (int)replies[i].Iov->Length));
            }
        }
    }

    private void WriteToSink(byte[] buffers, byte* data, MMsgHdr* replies, int count)
    {
        for (int i = 0; i < count; i++)
        {
            int offset = (int)(replies[i].Iov->Base - data);
            var written = _sink!.WriteAsync(0, buffers.AsMemory(offset, (int)replies[i].Iov->Length));
            if (!written.IsCompletedSuccessfully)
            {
                written.AsTask().GetAwaiter().GetResult(); // a slow stdout holds this loop; the kernel queues, then drops (counted)
            }
        }
    }

    private static string Describe(int errno) => Epoll.Native.ToSocketError(errno) is var error && error != SocketError.SocketError
        ? SocketErrorText.Describe(error)
        : $"{Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";

    /// <summary>SO_RXQ_OVFL: the socket's cumulative drop count, on a datagram received after drops.</summary>
    private void CountKernelDrops(ref MMsgHdr message)
    {
        if (message.ControlLength < (nuint)sizeof(CMsgHdr) + sizeof(uint))
        {
            return;
        }

        var header = (CMsgHdr*)message.Control;
        if (header->Level == 1 && header->Type == SO_RXQ_OVFL)
        {
            uint drops = *(uint*)(message.Control + sizeof(CMsgHdr));
            if (drops != _kernelDropsSeen)
            {
                _policy.KernelDropped(drops - _kernelDropsSeen);
                _kernelDropsSeen = drops;
            }
        }
    }
}

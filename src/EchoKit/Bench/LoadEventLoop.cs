using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using EchoKit.Internal.Epoll;

namespace EchoKit.Bench;

/// <summary>
/// What the load generator's epoll loops share, built like echoload (one thread, epoll, non-blocking sockets):
/// the epoll set, an eventfd that wakes the loop to stop, the thread, and a wait that ends at the loop's next
/// deadline with nanosecond precision (epoll_pwait2; milliseconds where the kernel or glibc lacks it). What
/// happens on an event and at a deadline is the TCP loop's (<see cref="EpollLoadLoop"/>) or the UDP loop's
/// (<see cref="UdpLoadLoop"/>). Linux x86-64 only, like the server's engine.
/// </summary>
internal abstract unsafe class LoadEventLoop
{
    private const int MaxEvents = 256;
    private const ulong WakeToken = ulong.MaxValue;

    private readonly int _epoll;
    private readonly int _wake;
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Thread _thread;
    private volatile bool _stop;
    private bool _closed; // under the _exited lock: the eventfd is gone
    private bool _nanosecondTimeouts = true;
    private HdrHistogram.LongHistogram? _histogram;

    protected LoadEventLoop(int index, LoadGenerator owner)
    {
        Owner = owner;
        _epoll = Native.EpollCreate1(Native.EPOLL_CLOEXEC);
        if (_epoll < 0)
        {
            throw new SocketException(Native.LastError);
        }

        _wake = Native.EventFd(0, Native.EFD_CLOEXEC | Native.EFD_NONBLOCK);
        if (_wake < 0 || Control(Native.EPOLL_CTL_ADD, _wake, Native.EPOLLIN, WakeToken) < 0)
        {
            int errno = Native.LastError; // read before close() can change it
            if (_wake >= 0)
            {
                Native.Close(_wake);
            }

            Native.Close(_epoll);
            throw new SocketException(errno);
        }

        _thread = new Thread(Run) { IsBackground = true, Name = $"echokit-bench-{index}" };
    }

    protected LoadGenerator Owner { get; }

    /// <summary>Completes when the loop has stopped; its sockets are then safe to close.</summary>
    public Task Exited => _exited.Task;

    /// <summary>Starts the thread (after the derived constructor has run).</summary>
    protected void Start() => _thread.UnsafeStart();

    public void Stop()
    {
        _stop = true;
        lock (_exited)
        {
            if (!_closed) // never write to the eventfd's number once it is closed (and perhaps reused)
            {
                ulong one = 1;
                Native.Write(_wake, &one, sizeof(ulong));
            }
        }
    }

    /// <summary>The histogram latencies go to while measuring (this loop thread's own), else null.</summary>
    protected HdrHistogram.LongHistogram? MeasuringHistogram => Owner.Measuring ? (_histogram ??= Owner.ThreadHistogram) : null;

    /// <summary>Registers the sockets and sends the first messages.</summary>
    protected abstract void Begin(long now);

    /// <summary>An event on the socket registered with <paramref name="token"/>.</summary>
    protected abstract void OnEvent(ulong token, uint events);

    /// <summary>After each wait's events: what is due at <paramref name="now"/>.</summary>
    protected abstract void OnTick(long now);

    /// <summary>When the loop must wake next without an event (Stopwatch ticks), or null: only for events.</summary>
    protected abstract double? NextDeadline();

    /// <summary>The loop failed (epoll itself): every socket of it has failed.</summary>
    protected abstract void FailAll();

    protected int Control(int op, int fd, uint events, ulong token) => Native.EpollControl(_epoll, op, fd, events, token);

    private void Run()
    {
        var events = (Native.EpollEvent*)NativeMemory.Alloc(MaxEvents, (nuint)sizeof(Native.EpollEvent));
        try
        {
            Begin(Stopwatch.GetTimestamp());
            while (!_stop && !Owner.Stopping)
            {
                ProcessBatch(events, Wait(events));
            }
        }
        catch (Exception e) when (e is SocketException or InvalidOperationException)
        {
            FailAll();
        }
        finally
        {
            NativeMemory.Free(events);
            lock (_exited)
            {
                _closed = true;
                Native.Close(_epoll);
                Native.Close(_wake);
            }

            _exited.TrySetResult();
        }
    }

    /// <summary>One epoll_wait's events, then what is due. Never inlined, so that the tiered JIT recompiles it (Run stays as ReadyToRun compiled it).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ProcessBatch(Native.EpollEvent* events, int n)
    {
        for (int i = 0; i < n; i++)
        {
            ulong token = events[i].Data;
            if (token == WakeToken)
            {
                ulong value;
                Native.Read(_wake, &value, sizeof(ulong));
                continue;
            }

            OnEvent(token, events[i].Events);
        }

        OnTick(Stopwatch.GetTimestamp());
    }

    private int Wait(Native.EpollEvent* events)
    {
        int n;
        if (NextDeadline() is not { } due)
        {
            n = Native.EpollWait(_epoll, events, MaxEvents, -1);
        }
        else
        {
            double waitTicks = due - Stopwatch.GetTimestamp();
            if (waitTicks <= 0)
            {
                n = Native.EpollPoll(_epoll, events, MaxEvents);
                if (n < 0)
                {
                    return Failed(-n);
                }
            }
            else if (_nanosecondTimeouts)
            {
                long ns = (long)(waitTicks * 1e9 / Stopwatch.Frequency);
                var timeout = new Native.Timespec { Seconds = ns / 1_000_000_000, Nanoseconds = ns % 1_000_000_000 };
                try
                {
                    n = Native.EpollPwait2(_epoll, events, MaxEvents, &timeout, null);
                    if (n < 0 && Native.LastError == Native.ENOSYS)
                    {
                        _nanosecondTimeouts = false;
                        n = 0;
                    }
                }
                catch (EntryPointNotFoundException)
                {
                    _nanosecondTimeouts = false; // glibc before 2.35
                    n = 0;
                }
            }
            else
            {
                n = Native.EpollWait(_epoll, events, MaxEvents, (int)Math.Ceiling(waitTicks * 1000 / Stopwatch.Frequency));
            }
        }

        return n < 0 ? Failed(Native.LastError) : n;
    }

    /// <summary>A wait that failed: none ready after EINTR, any other errno ends the loop.</summary>
    private static int Failed(int errno) => errno == Native.EINTR ? 0 : throw new SocketException(errno);
}

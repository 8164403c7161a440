using System.Buffers;
using System.Collections.Concurrent;
using System.Threading.Channels;

namespace EchoKit.Cli;

/// <summary>
/// Writes received payloads to stdout from one dedicated thread.
///
/// Slow stdout applies backpressure, it never grows a buffer: at most <see cref="QueueChunks"/> pooled
/// copies wait, and a connection whose copy does not fit waits (asynchronously) before it reads again, so
/// TCP slows its peer. If stdout fails (a closed pipe, EBADF, EIO), printing stops with one warning and
/// echoing carries on. On a terminal, control bytes are shown escaped (<see cref="TerminalText"/>): a peer
/// cannot retitle or clear the operator's terminal; a pipe or file gets the exact bytes. With a tag, each
/// line is prefixed with its connection's id. Markers (<see cref="AfterWritten"/>) ride the same queue, so a
/// connection's "closed" line is logged only once its bytes are out.
/// </summary>
internal sealed class StdoutPayloadSink : EchoKit.IPayloadSink
{
    public const int QueueChunks = 64;

    private readonly Channel<Item> _queue = Channel.CreateUnbounded<Item>(new UnboundedChannelOptions { SingleReader = true });
    private readonly SemaphoreSlim _room = new(QueueChunks, QueueChunks); // payload chunks only; markers are bounded by the connections
    private readonly ConcurrentDictionary<Marker, byte> _markers = new();
    private readonly GuardedOutput _stdout;
    private readonly bool _escape;
    private readonly bool _tag;
    private readonly Task _writer;
    private readonly ArrayBufferWriter<byte> _formatted = new(4096);

    public StdoutPayloadSink(GuardedOutput stdout, bool escapeControls, bool tag)
    {
        _stdout = stdout;
        _escape = escapeControls;
        _tag = tag;
        _writer = Task.Factory.StartNew(WriteLoop, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    public ValueTask WriteAsync(long connectionId, ReadOnlyMemory<byte> payload)
    {
        if (!_stdout.Working)
        {
            return ValueTask.CompletedTask;
        }

        byte[] copy = ArrayPool<byte>.Shared.Rent(payload.Length);
        payload.CopyTo(copy);
        var item = new Item(connectionId, copy, payload.Length, null);
        if (_room.Wait(0))
        {
            _queue.Writer.TryWrite(item);
            return ValueTask.CompletedTask;
        }

        return WaitForRoomAsync(item);
    }

    private async ValueTask WaitForRoomAsync(Item item)
    {
        await _room.WaitAsync().ConfigureAwait(false);
        if (!_queue.Writer.TryWrite(item))
        {
            ArrayPool<byte>.Shared.Return(item.Buffer!); // disposed meanwhile
        }
    }

    public void AfterWritten(Action then)
    {
        var marker = new Marker(then);
        _markers[marker] = 0;
        if (!_queue.Writer.TryWrite(new Item(0, null, 0, marker)))
        {
            Run(marker); // the writer has finished: nothing is left to wait for
        }
    }

    private void Run(Marker marker)
    {
        if (_markers.TryRemove(marker, out _))
        {
            marker.Then();
        }
    }

    private void WriteLoop()
    {
        var reader = _queue.Reader;
        while (reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
        {
            while (reader.TryRead(out var item))
            {
                if (item.Marker is { } marker)
                {
                    Run(marker);
                    continue;
                }

                try
                {
                    Print(item);
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(item.Buffer!);
                    _room.Release();
                }
            }
        }
    }

    private void Print(Item item)
    {
        var bytes = item.Buffer.AsSpan(0, item.Length);
        if (!_escape && !_tag)
        {
            _stdout.Write(bytes);
            return;
        }

        _formatted.ResetWrittenCount();
        TerminalText.Format(bytes, _escape, _tag ? item.ConnectionId : null, _formatted);
        _stdout.Write(_formatted.WrittenSpan);
    }

    /// <summary>
    /// Stops taking payloads and writes what is queued, for at most <paramref name="budget"/>: a stdout
    /// nobody reads cannot hold the exit. What is left then is given up (and said so); every pending
    /// marker still runs, so no "closed" line is lost.
    /// </summary>
    public async ValueTask DisposeAsync(TimeSpan budget)
    {
        _queue.Writer.TryComplete();
        if (await Task.WhenAny(_writer, Task.Delay(budget < TimeSpan.Zero ? TimeSpan.Zero : budget)).ConfigureAwait(false) != _writer)
        {
            Console.Error.WriteLine($"echokit: stdout did not take the last received bytes within the shutdown timeout; exiting without printing them");
            foreach (var marker in _markers.Keys)
            {
                Run(marker);
            }
        }
    }

    private readonly record struct Item(long ConnectionId, byte[]? Buffer, int Length, Marker? Marker);

    private sealed class Marker(Action then)
    {
        public Action Then { get; } = then;
    }
}

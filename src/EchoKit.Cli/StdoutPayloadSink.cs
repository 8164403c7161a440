using System.Buffers;
using System.Threading.Channels;

namespace EchoKit.Cli;

/// <summary>
/// Writes received payloads raw to stdout from one dedicated thread.
///
/// Slow stdout applies backpressure, it never grows a buffer: the queue holds at most
/// <see cref="QueueChunks"/> pooled copies, and a connection whose copy does not fit waits
/// (asynchronously) before it reads again, so TCP slows its peer. If stdout goes away
/// (a closed pipe) printing stops with one warning and echoing carries on.
/// </summary>
internal sealed class StdoutPayloadSink : EchoKit.IPayloadSink, IAsyncDisposable
{
    public const int QueueChunks = 64;

    private readonly Channel<(byte[] Buffer, int Length)> _queue =
        Channel.CreateBounded<(byte[], int)>(new BoundedChannelOptions(QueueChunks)
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });

    private readonly Stream _stdout;
    private readonly Task _writer;
    private volatile bool _broken;

    public StdoutPayloadSink(Stream stdout)
    {
        _stdout = stdout;
        _writer = Task.Factory.StartNew(WriteLoop, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    public ValueTask WriteAsync(long connectionId, ReadOnlyMemory<byte> payload)
    {
        if (_broken)
        {
            return ValueTask.CompletedTask;
        }

        byte[] copy = ArrayPool<byte>.Shared.Rent(payload.Length);
        payload.CopyTo(copy);
        return _queue.Writer.WriteAsync((copy, payload.Length));
    }

    private void WriteLoop()
    {
        var reader = _queue.Reader;
        while (reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
        {
            while (reader.TryRead(out var chunk))
            {
                try
                {
                    if (!_broken)
                    {
                        _stdout.Write(chunk.Buffer, 0, chunk.Length);
                        if (reader.Count == 0)
                        {
                            _stdout.Flush();
                        }
                    }
                }
                catch (IOException e)
                {
                    _broken = true;
                    Console.Error.WriteLine($"echokit: stdout failed ({e.Message}); no longer printing received bytes");
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(chunk.Buffer);
                }
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        _queue.Writer.TryComplete();
        await _writer.ConfigureAwait(false);
        try
        {
            _stdout.Flush();
        }
        catch (IOException)
        {
            // stdout is gone; nothing left to do.
        }
    }
}

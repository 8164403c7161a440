namespace EchoKit.Cli;

/// <summary>
/// stdout for bytes: writes go straight to descriptor 1; the first failure (a closed pipe, EBADF, EIO) is
/// one warning on stderr, and from then on everything is discarded: a program whose output went away
/// goes on doing its work (the server goes on echoing).
/// </summary>
internal sealed class GuardedOutput(Stream? stdout)
{
    private readonly Lock _gate = new();
    private volatile bool _broken = stdout is null;

    /// <summary>False once stdout has failed (or was closed from the start): output is discarded.</summary>
    public bool Working => !_broken;

    /// <summary>Writes all of <paramref name="bytes"/>, or nothing once stdout has failed.</summary>
    public void Write(ReadOnlySpan<byte> bytes)
    {
        if (_broken)
        {
            return;
        }

        try
        {
            stdout!.Write(bytes);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException or NotSupportedException)
        {
            Fail(e);
        }
    }

    /// <summary>Warns, once, that stdout was closed from the start (when something would have been printed there).</summary>
    public void WarnIfClosed(string what)
    {
        if (stdout is null && !_warnedClosed)
        {
            _warnedClosed = true;
            Console.Error.WriteLine($"echokit: stdout is closed: {what}");
        }
    }

    private bool _warnedClosed;

    private void Fail(Exception e)
    {
        lock (_gate)
        {
            if (_broken)
            {
                return;
            }

            _broken = true;
        }

        string why = EchoKit.Internal.FileErrorText.OfWrite(e) + (e is IOException { HResult: EchoKit.Internal.FileErrorText.Epipe } ? ": the reader has gone" : "");
        Console.Error.WriteLine($"echokit: stdout failed ({why}); no longer printing received bytes");
    }
}

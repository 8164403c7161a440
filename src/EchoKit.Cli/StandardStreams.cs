using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace EchoKit.Cli;

/// <summary>
/// Standard input, output and error as the process really got them.
///
/// A program started with a standard descriptor closed (<c>echokit serve &gt;&amp;-</c>) does not keep that
/// number free: the runtime's own next open takes it before Main runs (a pipe, /dev/urandom), and a
/// "stdout" write then fails with EBADF (as UnauthorizedAccessException) or a "stdin" yields random bytes.
/// What the runtime opens always has FD_CLOEXEC, and what a process inherits across exec never does, so a
/// descriptor 0, 1 or 2 that is missing, close-on-exec, or open the wrong way is taken as closed: stdin
/// then reads as EOF, and output to a closed stdout or stderr goes nowhere.
///
/// Output goes through <see cref="GuardedOutput"/>, which turns the first failure (EPIPE, EBADF, EIO …)
/// into one warning and discards what follows, instead of the Console stream's silent drop of EPIPE.
/// </summary>
internal static class StandardStreams
{

    private static GuardedOutput? s_output;

    public static bool InputOpen { get; private set; } = true;

    public static bool OutputOpen { get; private set; } = true;

    public static bool ErrorOpen { get; private set; } = true;

    /// <summary>Whether stdout is a terminal (where a peer's control bytes must not reach it raw).</summary>
    public static bool OutputIsTerminal => OutputOpen && !Console.IsOutputRedirected;

    /// <summary>Looks at descriptors 0, 1 and 2; the first thing Main does.</summary>
    public static void Inspect()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        InputOpen = Inherited(0, write: false);
        OutputOpen = Inherited(1, write: true);
        ErrorOpen = Inherited(2, write: true);
        if (!InputOpen)
        {
            Console.SetIn(TextReader.Null);
        }

        if (!OutputOpen)
        {
            Console.SetOut(TextWriter.Null);
        }

        if (!ErrorOpen)
        {
            Console.SetError(TextWriter.Null);
        }
        else
        {
            // Console.Error drops EPIPE silently and throws on nothing else we care about; keep it, but never
            // let a write to it throw (EBADF on a descriptor revoked under us, EIO on a hung-up terminal).
            Console.SetError(TextWriter.Synchronized(new SafeWriter(Console.Error)));
        }
    }

    /// <summary>stdin, or an empty stream (EOF at once) when the process got none.</summary>
    public static Stream OpenInput() => InputOpen ? Console.OpenStandardInput() : Stream.Null;

    /// <summary>
    /// stdout for bytes (payload, received data): the one shared <see cref="GuardedOutput"/>, whose first
    /// failure is one warning on stderr.
    /// </summary>
    public static GuardedOutput Output => s_output ??= new GuardedOutput(OpenOutput());

    /// <summary>Descriptor 1 as a stream, unbuffered and not owned (null when stdout was closed at start): for what writes it whole.</summary>
    public static Stream? OpenOutput() => OutputOpen ? new FileStream(new SafeFileHandle(1, ownsHandle: false), FileAccess.Write, bufferSize: 0) : null;

    private static bool Inherited(int fd, bool write)
    {
        try
        {
            int fdFlags = Fcntl.Call(fd, Fcntl.F_GETFD);
            if (fdFlags < 0 || (fdFlags & Fcntl.FD_CLOEXEC) != 0)
            {
                return false; // closed, or the runtime's own descriptor
            }

            int mode = Fcntl.Call(fd, Fcntl.F_GETFL) & Fcntl.O_ACCMODE;
            return mode == Fcntl.O_RDWR || mode == (write ? Fcntl.O_WRONLY : Fcntl.O_RDONLY);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return true;
        }
    }

    /// <summary>A TextWriter that never throws: stderr failing is no reason for anything else to fail.</summary>
    private sealed class SafeWriter(TextWriter inner) : TextWriter
    {
        public override System.Text.Encoding Encoding => inner.Encoding;

        public override void Write(char value) => Try(() => inner.Write(value));

        public override void Write(string? value) => Try(() => inner.Write(value));

        public override void WriteLine(string? value) => Try(() => inner.WriteLine(value));

        public override void Flush() => Try(inner.Flush);

        private static void Try(Action write)
        {
            try
            {
                write();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException)
            {
                // stderr is gone: nothing to tell, nowhere to tell it.
            }
        }
    }
}

namespace EchoKit.Internal;

/// <summary>Why a file the user named could not be read, as a user knows the errno: ENOENT, EACCES, or the runtime's words.</summary>
internal static class FileErrorText
{
    public static string Describe(Exception e) => e switch
    {
        FileNotFoundException or DirectoryNotFoundException => "No such file or directory (ENOENT)",
        UnauthorizedAccessException => "Permission denied (EACCES)",
        _ => e.Message,
    };

    /// <summary>
    /// Why a write to an open descriptor (stdout, a dump file) failed, with the errno: .NET reports EBADF as
    /// <see cref="UnauthorizedAccessException"/> and keeps the errno of an <see cref="IOException"/> in its HResult.
    /// </summary>
    public static string OfWrite(Exception e) => e switch
    {
        UnauthorizedAccessException => "Bad file descriptor (EBADF)",
        IOException { HResult: Epipe } => "Broken pipe (EPIPE)",
        IOException { HResult: 5 } => "Input/output error (EIO)",
        IOException { HResult: 28 } => "No space left on device (ENOSPC)",
        _ => e.Message,
    };

    /// <summary>EPIPE: the reader has gone.</summary>
    public const int Epipe = 32;
}

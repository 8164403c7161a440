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
}

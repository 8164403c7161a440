using System.Runtime.InteropServices;

namespace EchoKit.Internal;

/// <summary>
/// Whether a path is a socket file. .NET exposes no file type beyond file and directory, so this asks
/// lstat(2) directly; st_mode's offset in struct stat is fixed per Linux architecture.
/// </summary>
internal static class FileKind
{
    private const uint TypeMask = 0xF000; // S_IFMT
    private const uint Socket = 0xC000;   // S_IFSOCK

    [DllImport("libc", EntryPoint = "lstat", SetLastError = true)]
    private static extern int LStat(string path, byte[] buffer);

    /// <summary>True or false where it can tell (Linux x64 and arm64), null elsewhere.</summary>
    public static bool? IsSocket(string path)
    {
        int modeOffset = RuntimeInformation.ProcessArchitecture switch
        {
            Architecture.X64 => 24,
            Architecture.Arm64 => 16,
            _ => -1,
        };
        if (!OperatingSystem.IsLinux() || modeOffset < 0)
        {
            return null;
        }

        var stat = new byte[256]; // larger than struct stat on both
        try
        {
            if (LStat(path, stat) != 0)
            {
                return null;
            }
        }
        catch (EntryPointNotFoundException)
        {
            return null; // glibc before 2.33 exports only __lxstat
        }

        return (BitConverter.ToUInt32(stat, modeOffset) & TypeMask) == Socket;
    }
}

using System.Runtime.InteropServices;

namespace EchoKit.Internal;

/// <summary>
/// What a path is, asked of lstat(2) directly (never following a link): .NET exposes no file type beyond
/// file and directory, nor a file's device and inode. The offsets in struct stat are fixed per Linux
/// architecture: st_dev at 0 and st_ino at 8 on both, st_mode at 24 on x86-64 and 16 on arm64.
/// </summary>
internal static class FileKind
{
    private const uint TypeMask = 0xF000; // S_IFMT
    private const uint Socket = 0xC000;   // S_IFSOCK

    /// <summary>lstat's answer, as far as it is needed here.</summary>
    public readonly record struct FileStat(ulong Device, ulong Inode, uint Mode);

    [DllImport("libc", EntryPoint = "lstat", SetLastError = true)]
    private static extern int LStat(string path, byte[] buffer);

    /// <summary>True or false where it can tell (Linux x64 and arm64), null elsewhere or if there is nothing at the path.</summary>
    public static bool? IsSocket(string path) => Stat(path) is { } stat ? (stat.Mode & TypeMask) == Socket : null;

    /// <summary>lstat of <paramref name="path"/>; null where it cannot tell (another OS, nothing there).</summary>
    public static FileStat? Stat(string path)
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

        return new FileStat(BitConverter.ToUInt64(stat, 0), BitConverter.ToUInt64(stat, 8), BitConverter.ToUInt32(stat, modeOffset));
    }
}

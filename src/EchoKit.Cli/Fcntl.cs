using System.Runtime.InteropServices;

namespace EchoKit.Cli;

/// <summary>fcntl(2) on the descriptors the process inherited: its standard streams and systemd's sockets.</summary>
internal static class Fcntl
{
    public const int F_GETFD = 1;
    public const int F_SETFD = 2;
    public const int F_GETFL = 3;
    public const int FD_CLOEXEC = 1;
    public const int O_ACCMODE = 3;
    public const int O_RDONLY = 0;
    public const int O_WRONLY = 1;
    public const int O_RDWR = 2;

    /// <summary>fcntl(fd, command, argument); the argument is ignored by the commands that take none.</summary>
    [DllImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    public static extern int Call(int fd, int command, int argument = 0);
}

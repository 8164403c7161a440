using System.Globalization;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace EchoKit.Cli;

/// <summary>
/// systemd's socket activation (sd_listen_fds(3)): when LISTEN_PID is this process, LISTEN_FDS sockets start at
/// descriptor 3, already bound (and, for streams, listening) by the .socket unit; LISTEN_FDNAMES names them.
/// The server serves those instead of binding. Each must be a listening stream socket or a datagram socket:
/// a connected stream (a unit with <c>Accept=yes</c>, one process per connection) is refused with the reason.
/// The variables are then removed, as sd_listen_fds(unset_environment=1) does, and the descriptors made
/// close-on-exec.
/// </summary>
internal static class SystemdSockets
{
    private const int FirstDescriptor = 3;
    private const int SolSocket = 1;
    private const int SoAcceptConn = 30;

    /// <summary>The sockets passed (null: no socket activation for this process), or the one-line reason they cannot be served.</summary>
    public static (IReadOnlyList<Socket>? Sockets, string? Names, string? Error) Take()
    {
        string? pidText = Environment.GetEnvironmentVariable("LISTEN_PID"), fdsText = Environment.GetEnvironmentVariable("LISTEN_FDS");
        if (pidText is null || fdsText is null)
        {
            return (null, null, null);
        }

        if (!int.TryParse(pidText, NumberStyles.None, CultureInfo.InvariantCulture, out int pid) || pid != Environment.ProcessId)
        {
            return (null, null, null); // meant for another process (one that started us): not ours to take
        }

        string? names = Environment.GetEnvironmentVariable("LISTEN_FDNAMES");
        Environment.SetEnvironmentVariable("LISTEN_PID", null);
        Environment.SetEnvironmentVariable("LISTEN_FDS", null);
        Environment.SetEnvironmentVariable("LISTEN_FDNAMES", null);
        if (!int.TryParse(fdsText, NumberStyles.None, CultureInfo.InvariantCulture, out int count) || count is < 1 or > 1024)
        {
            return (null, null, $"socket activation: LISTEN_FDS is '{fdsText}', not a number of descriptors from 1 to 1024");
        }

        var sockets = new List<Socket>();
        for (int fd = FirstDescriptor; fd < FirstDescriptor + count; fd++)
        {
            if (Describe(fd) is { } problem)
            {
                foreach (var socket in sockets)
                {
                    socket.Dispose();
                }

                return (null, null, $"socket activation: descriptor {fd} (of LISTEN_FDS={count}) {problem}");
            }

            _ = Fcntl.Call(fd, Fcntl.F_SETFD, Fcntl.FD_CLOEXEC);
            sockets.Add(new Socket(new SafeSocketHandle(fd, ownsHandle: true)));
        }

        return (sockets, names, null);
    }

    /// <summary>Null for a socket we can serve; else what is wrong with it.</summary>
    private static string? Describe(int fd)
    {
        int type = 0, listening = 0;
        uint length = sizeof(int);
        if (GetSockOpt(fd, SolSocket, 3 /* SO_TYPE */, ref type, ref length) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            return errno == 88 ? "is not a socket (ENOTSOCK)" : errno == 9 ? "is not open (EBADF)" : $"cannot be read (errno {errno})";
        }

        if (type == 2 /* SOCK_DGRAM */)
        {
            return null;
        }

        if (type != 1 /* SOCK_STREAM */)
        {
            return $"is a socket of type {type}, neither a stream nor a datagram socket";
        }

        length = sizeof(int);
        if (GetSockOpt(fd, SolSocket, SoAcceptConn, ref listening, ref length) != 0 || listening == 0)
        {
            return "is a stream socket that is not listening (a unit with Accept=yes passes one connection per process: use Accept=no)";
        }

        return null;
    }

    [DllImport("libc", EntryPoint = "getsockopt", SetLastError = true)]
    private static extern int GetSockOpt(int fd, int level, int name, ref int value, ref uint length);
}

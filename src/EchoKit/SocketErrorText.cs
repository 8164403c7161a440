using System.Net.Sockets;

namespace EchoKit;

/// <summary>
/// Maps .NET's <see cref="SocketError"/> (a Windows-flavoured code, also on Linux) back to the
/// errno name and strerror text that a network engineer knows. A plain table, as in the
/// runtime's SocketErrorPal.Unix.cs, read in the other direction.
/// </summary>
internal static class SocketErrorText
{
    public static (string Errno, string Message) Of(SocketError error) => error switch
    {
        SocketError.AddressAlreadyInUse => ("EADDRINUSE", "Address already in use"),
        SocketError.AddressNotAvailable => ("EADDRNOTAVAIL", "Cannot assign requested address"),
        SocketError.AccessDenied => ("EACCES", "Permission denied"),
        SocketError.ConnectionRefused => ("ECONNREFUSED", "Connection refused"),
        SocketError.ConnectionReset => ("ECONNRESET", "Connection reset by peer"),
        SocketError.ConnectionAborted => ("ECONNABORTED", "Software caused connection abort"),
        SocketError.Shutdown => ("EPIPE", "Broken pipe"),
        SocketError.TimedOut => ("ETIMEDOUT", "Connection timed out"),
        SocketError.HostNotFound => ("EAI_NONAME", "Name or service not known"),
        SocketError.TryAgain => ("EAI_AGAIN", "Temporary failure in name resolution"),
        SocketError.NoData => ("EAI_NODATA", "No address associated with hostname"),
        SocketError.NoRecovery => ("EAI_FAIL", "Non-recoverable failure in name resolution"),
        SocketError.HostUnreachable => ("EHOSTUNREACH", "No route to host"),
        SocketError.HostDown => ("EHOSTDOWN", "Host is down"),
        SocketError.NetworkUnreachable => ("ENETUNREACH", "Network is unreachable"),
        SocketError.NetworkDown => ("ENETDOWN", "Network is down"),
        SocketError.NetworkReset => ("ENETRESET", "Network dropped connection on reset"),
        SocketError.TooManyOpenSockets => ("EMFILE", "Too many open files"),
        SocketError.NoBufferSpaceAvailable => ("ENOBUFS", "No buffer space available"),
        SocketError.AddressFamilyNotSupported => ("EAFNOSUPPORT", "Address family not supported by protocol"),
        SocketError.ProtocolNotSupported => ("EPROTONOSUPPORT", "Protocol not supported"),
        SocketError.ProtocolType => ("EPROTOTYPE", "Protocol wrong type for socket"),
        SocketError.InvalidArgument => ("EINVAL", "Invalid argument"),
        SocketError.MessageSize => ("EMSGSIZE", "Message too long"),
        SocketError.NotConnected => ("ENOTCONN", "Transport endpoint is not connected"),
        SocketError.IsConnected => ("EISCONN", "Transport endpoint is already connected"),
        SocketError.WouldBlock => ("EAGAIN", "Resource temporarily unavailable"),
        SocketError.InProgress => ("EINPROGRESS", "Operation now in progress"),
        SocketError.AlreadyInProgress => ("EALREADY", "Operation already in progress"),
        SocketError.OperationAborted => ("ECANCELED", "Operation canceled"),
        SocketError.Interrupted => ("EINTR", "Interrupted system call"),
        SocketError.Fault => ("EFAULT", "Bad address"),
        SocketError.DestinationAddressRequired => ("EDESTADDRREQ", "Destination address required"),
        SocketError.OperationNotSupported => ("EOPNOTSUPP", "Operation not supported"),
        _ => (error.ToString(), error.ToString()),
    };

    /// <summary>"Connection refused (ECONNREFUSED)".</summary>
    public static string Describe(SocketError error)
    {
        var (errno, message) = Of(error);
        return errno == message ? message : $"{message} ({errno})";
    }

    /// <summary>Whether the error means the peer went away abruptly (RST, or a write after it closed).</summary>
    public static bool IsPeerReset(SocketError error) =>
        error is SocketError.ConnectionReset or SocketError.Shutdown or SocketError.ConnectionAborted;
}

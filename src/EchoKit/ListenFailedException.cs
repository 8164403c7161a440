using System.Net;
using System.Net.Sockets;

namespace EchoKit;

/// <summary>The server could not bind or listen on an address. The message is the one line a user should see.</summary>
public sealed class ListenFailedException : Exception
{
    public ListenFailedException(string operation, EndPoint endPoint, SocketError error, Exception? inner = null)
        : base($"{operation} failed: {Describe(endPoint, error)} on {EndPointText.Format(endPoint)}", inner)
    {
        Operation = operation;
        EndPoint = endPoint;
        SocketError = error;
    }

    /// <summary>The server cannot start at all (too few descriptors): the message says why and what to do.</summary>
    public ListenFailedException(string message, SocketError error)
        : base(message)
    {
        Operation = "start";
        EndPoint = new IPEndPoint(IPAddress.None, 0);
        SocketError = error;
    }

    /// <summary>
    /// The error in words. A Unix socket path whose directory does not exist fails with ENOENT, which .NET
    /// reports as AddressNotAvailable: named as what it is, not as a missing IP address.
    /// </summary>
    private static string Describe(EndPoint endPoint, SocketError error) =>
        endPoint is UnixDomainSocketEndPoint && error == SocketError.AddressNotAvailable
            ? "No such file or directory (ENOENT)"
            : SocketErrorText.Describe(error);

    /// <summary>"bind" or "listen".</summary>
    public string Operation { get; }

    public EndPoint EndPoint { get; }

    public SocketError SocketError { get; }
}

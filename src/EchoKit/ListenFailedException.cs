using System.Net;
using System.Net.Sockets;

namespace EchoKit;

/// <summary>The server could not bind or listen on an address. The message is the one line a user should see.</summary>
public sealed class ListenFailedException : Exception
{
    public ListenFailedException(string operation, EndPoint endPoint, SocketError error, Exception? inner = null)
        : base($"{operation} failed: {SocketErrorText.Describe(error)} on {EndPointText.Format(endPoint)}", inner)
    {
        Operation = operation;
        EndPoint = endPoint;
        SocketError = error;
    }

    /// <summary>"bind" or "listen".</summary>
    public string Operation { get; }

    public EndPoint EndPoint { get; }

    public SocketError SocketError { get; }
}

using System.Net.Sockets;

namespace EchoKit.Client;

/// <summary>A connection could not be opened: name resolution, refusal, timeout or another socket error.</summary>
public sealed class ConnectFailedException(string message, string host, int port, SocketError error, Exception? inner = null)
    : Exception(message, inner)
{
    public string Host { get; } = host;

    public int Port { get; } = port;

    public SocketError SocketError { get; } = error;

    public bool IsResolutionFailure => SocketError is SocketError.HostNotFound or SocketError.TryAgain or SocketError.NoData or SocketError.NoRecovery;
}

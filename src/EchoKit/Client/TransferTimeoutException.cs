namespace EchoKit.Client;

/// <summary>A send or receive made no progress within its timeout.</summary>
public sealed class TransferTimeoutException(string message) : TimeoutException(message);

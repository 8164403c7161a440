namespace EchoKit.Internal;

/// <summary>
/// What serves stream connections (TCP and Unix stream sockets) once <see cref="EchoServer"/> has bound the
/// listeners: the epoll engine (our own event loops, <c>Internal/Epoll/</c>) or the Socket engine (.NET's
/// Socket API, <c>Internal/Sockets/</c>). The server never asks which one it has: it starts it, stops it
/// accepting, and drains it. Each engine admits new connections through <see cref="EchoServer"/> (limits,
/// the busy reply) and reports every close to it; timeouts follow <see cref="TimeoutPolicy"/> and the accept
/// back-off <see cref="AcceptBackoff"/> in both.
/// </summary>
internal interface IStreamEngine
{
    /// <summary>Starts accepting on the server's listeners and serving what is accepted.</summary>
    void Start();

    /// <summary>Completes once no new connection can be accepted (the listeners are not closed by it).</summary>
    Task StopAcceptingAsync();

    /// <summary>
    /// The graceful drain: each connection echoes what it has and, once quiet for <paramref name="quietMs"/>,
    /// gets a FIN; what is left at <paramref name="deadlineMs"/> (MonotonicClock) is reset. Completes when
    /// every connection has closed; returns how many were reset at the deadline.
    /// </summary>
    Task<int> DrainAsync(long deadlineMs, long quietMs);

    /// <summary>New idle and send timeouts (a reload): they apply to every connection, open ones included.</summary>
    void ApplyTimeouts(TimeoutPolicy policy);

    /// <summary>The bytes received and sent so far by the connections open now (for metrics; read without locks, on a scrape).</summary>
    (long In, long Out) OpenBytes();
}

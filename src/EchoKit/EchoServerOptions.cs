using System.Net;

namespace EchoKit;

/// <summary>Everything the server needs to know, fixed at start. Immutable: build a new one with <c>with</c>.</summary>
public sealed record EchoServerOptions
{
    /// <summary>
    /// Where to listen. Empty means all interfaces: one dual-stack IPv6 socket on [::] where the
    /// OS allows, else 0.0.0.0.
    /// </summary>
    public IReadOnlyList<IPAddress> BindAddresses { get; init; } = [];

    /// <summary>Only IPv4 (<see cref="System.Net.Sockets.AddressFamily.InterNetwork"/>) or only IPv6; null for both.</summary>
    public System.Net.Sockets.AddressFamily? Family { get; init; }

    /// <summary>Serve TCP echo (the default).</summary>
    public bool Tcp { get; init; } = true;

    /// <summary>Serve UDP echo on the same port.</summary>
    public bool Udp { get; init; }

    /// <summary>UDP datagrams per second answered per source address; 0: unlimited.</summary>
    public int UdpRate { get; init; } = 1000;

    /// <summary>Answer UDP datagrams from source ports below 1024 (off: they are a reflection-loop risk).</summary>
    public bool UdpAllowLowPorts { get; init; }

    /// <summary>
    /// Largest datagram echoed; larger ones are dropped and counted, never echoed cut short. Null: the
    /// largest the transport carries (65,507 bytes over IPv4, 65,527 over IPv6, about twice net.core.wmem_max over Unix).
    /// </summary>
    public int? MaxDatagramSize { get; init; }

    /// <summary>
    /// The receive buffer (SO_RCVBUF) of each UDP or Unix datagram socket, in bytes: room for a burst. Null:
    /// 4 MiB. Above net.core.rmem_max only with CAP_NET_ADMIN (SO_RCVBUFFORCE); a capped size is logged.
    /// </summary>
    public int? UdpReceiveBufferBytes { get; init; }

    /// <summary>The send buffer (SO_SNDBUF) of each datagram socket, in bytes. Null: 4 MiB (capped by net.core.wmem_max).</summary>
    public int? UdpSendBufferBytes { get; init; }

    /// <summary>Listen on this Unix domain socket instead of TCP: a stream socket, or a datagram socket with <see cref="Udp"/> alone.</summary>
    public string? UnixPath { get; init; }

    /// <summary>Permissions of the socket file (e.g. 0660), or null for the umask's.</summary>
    public UnixFileMode? UnixMode { get; init; }

    /// <summary>TCP port; 0 lets the OS choose (the chosen port is in <see cref="EchoServer.LocalEndPoints"/>).</summary>
    public int Port { get; init; } = 8888;

    /// <summary>Send the three tutorial lines before echoing.</summary>
    public bool SendGreeting { get; init; } = true;

    /// <summary>Socket engine: bytes received per read; one such buffer is rented per active connection, none while idle.</summary>
    public int ReceiveBufferSize { get; init; } = 64 * 1024;

    /// <summary>
    /// Epoll engine: bytes an event loop reads at once, into its one shared buffer; also the most a
    /// connection keeps for a peer that does not take its echo (reading stops until it does). 256 KiB
    /// rather than 64: with 32 KiB messages four in flight come back in one read and one send
    /// (compare.sh D: 1.08x the C epoll server's MB/s instead of 1.00x, 7.7 vs 8.4 us of CPU per message).
    /// </summary>
    public int LoopBufferSize { get; init; } = 256 * 1024;

    /// <summary>listen(2) backlog.</summary>
    public int Backlog { get; init; } = 4096;

    /// <summary>How long a shutdown waits for connections to finish before aborting them.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>Connections served at once; 0 = unlimited.</summary>
    public int MaxConnections { get; init; } = 10_000;

    /// <summary>A connection that receives nothing for this long is closed; <see cref="TimeSpan.Zero"/> disables.</summary>
    public TimeSpan IdleTimeout { get; init; } = TimeSpan.FromSeconds(300);

    /// <summary>A send that makes no progress for this long closes the connection; <see cref="TimeSpan.Zero"/> disables.</summary>
    public TimeSpan SendTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>How stream connections (TCP, Unix) are served; see <see cref="EchoEngine"/>.</summary>
    public EchoEngine Engine { get; init; } = EchoEngine.Auto;

    /// <summary>The steps every stream connection goes through after admission and before its greeting, in order.</summary>
    internal IReadOnlyList<Internal.Stages.IConnectionStage> Stages
    {
        get => _stages;
        init
        {
            _stages = value;
            PrefixStages = value.OfType<Internal.Stages.IPrefixStage>().ToArray();
            StreamStages = value.OfType<Internal.Stages.IStreamStage>().ToArray();
        }
    }

    private readonly IReadOnlyList<Internal.Stages.IConnectionStage> _stages = [];

    /// <summary>The stages that read a prefix before the greeting, in order (derived from <see cref="Stages"/>).</summary>
    internal IReadOnlyList<Internal.Stages.IPrefixStage> PrefixStages { get; private init; } = [];

    /// <summary>The stages that wrap the byte stream, in order (derived from <see cref="Stages"/>).</summary>
    internal IReadOnlyList<Internal.Stages.IStreamStage> StreamStages { get; private init; } = [];

    /// <summary>
    /// TLS on the stream listeners (or, with <see cref="Internal.Tls.TlsSettings.Port"/>, on a port of its own beside
    /// the plaintext one); null: none.
    /// </summary>
    internal Internal.Tls.TlsSettings? Tls { get; init; }

    /// <summary>Who may connect or send datagrams (--allow/--deny, --max-per-address, --allow-uid/--allow-gid); null: anyone.</summary>
    internal Internal.Access.AccessSettings? Access { get; init; }

    /// <summary>--hex-dump: every byte of every connection and datagram, each way, as text2pcap reads it (null: off).</summary>
    internal Internal.HexDump? HexDump { get; init; }

    /// <summary>A TCP port that answers "ok" while the server serves (closed first at the stop); null: none, 0: the OS chooses.</summary>
    internal int? HealthPort { get; init; }

    /// <summary>
    /// SO_REUSEPORT on the stream listeners: several processes share the port (a restart starts the new process
    /// before the old one stops). Off: a second server on the port is refused with EADDRINUSE.
    /// </summary>
    internal bool ReusePort { get; init; }

    /// <summary>
    /// Sockets handed to the process already bound (systemd's socket activation: listening stream sockets and
    /// datagram sockets), served instead of binding <see cref="Port"/>, <see cref="UnixPath"/> and the rest.
    /// </summary>
    internal IReadOnlyList<System.Net.Sockets.Socket>? Inherited { get; init; }

    /// <summary>Event loops of the epoll engine; 0: one per CPU this process may run on.</summary>
    public int EngineLoops { get; init; }

    /// <summary>
    /// Epoll engine: while traffic is dense (the recent gaps between batches of events are shorter than
    /// this), an event loop polls for up to this long before it sleeps in epoll_wait, so that a client's
    /// next message finds it awake: no wake-up to pay on either side. Sparse traffic and idle servers
    /// sleep at once. <see cref="TimeSpan.Zero"/> disables.
    /// </summary>
    public TimeSpan BusyPoll { get; init; } = TimeSpan.FromMicroseconds(50);

    /// <summary>Disable Nagle on accepted sockets, so that echoes leave at once.</summary>
    public bool NoDelay { get; init; } = true;
}

using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>The epoll engine (the default on Linux x86-64) in process.</summary>
public sealed class EpollEchoTests : EchoTests
{
    protected override EchoEngine Engine => EchoEngine.Epoll;
}

/// <summary>The portable Socket engine in process.</summary>
public sealed class SocketEchoTests : EchoTests
{
    protected override EchoEngine Engine => EchoEngine.Socket;
}

/// <summary>The echo engine in process, over real loopback sockets (IPv4 and IPv6); run once per engine.</summary>
public abstract class EchoTests
{
    protected abstract EchoEngine Engine { get; }

    private Task<EchoServer> StartAsync(EchoServerOptions? options = null)
    {
        Assert.SkipWhen(Engine == EchoEngine.Epoll && !EchoServer.EpollSupported, "the epoll engine runs on Linux x86-64 only");
        var server = new EchoServer((options ?? new EchoServerOptions()) with { Port = 0, Engine = Engine });
        server.Start();
        return Task.FromResult(server);
    }

    private static int PortOf(EchoServer server) => server.LocalEndPoints[0].Port;

    [Fact]
    public void Greeting_is_the_three_tutorial_lines_exactly()
    {
        var expected = "Hello Client , I have received your connection. And now I will assign a handler for you\n"
            + "Greetings! I am your connection handler\n"
            + "Now type something and i shall repeat what you type \n";
        Assert.Equal(System.Text.Encoding.ASCII.GetBytes(expected), GreetingBytes);
        Assert.Equal(181, GreetingBytes.Length);
    }

    [Theory]
    [InlineData("127.0.0.1")]
    [InlineData("::1")]
    public async Task Each_client_is_greeted_then_echoed_over_IPv4_and_IPv6_on_the_default_dual_stack_socket(string address)
    {
        await using var server = await StartAsync();
        using var client = await ConnectAsync(IPAddress.Parse(address), PortOf(server));

        Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
        byte[] line = "ping\n"u8.ToArray();
        await client.SendAsync(line);
        Assert.Equal(line, await ReceiveExactlyAsync(client, line.Length));
    }

    [Fact]
    public async Task No_greeting_means_plain_echo()
    {
        await using var server = await StartAsync(new EchoServerOptions { SendGreeting = false });
        using var client = await ConnectAsync(PortOf(server));
        await client.SendAsync("x"u8.ToArray());
        Assert.Equal("x"u8.ToArray(), await ReceiveExactlyAsync(client, 1));
    }

    [Fact]
    public async Task One_MiB_of_random_binary_comes_back_byte_exact()
    {
        await using var server = await StartAsync(new EchoServerOptions { SendGreeting = false });
        using var client = await ConnectAsync(PortOf(server));
        var payload = new byte[1 << 20];
        Random.Shared.NextBytes(payload);
        // Every byte value, telnet IAC (0xFF) and NUL included, in the first 256 bytes.
        for (int i = 0; i < 256; i++)
        {
            payload[i] = (byte)i;
        }

        // Send and receive at once: a sender that waits for all its bytes to be sent before reading
        // would deadlock once both directions' kernel buffers fill.
        var send = client.SendAsync(payload);
        var echoed = await ReceiveExactlyAsync(client, payload.Length);
        await send.WaitAsync(Deadline);
        Assert.Equal(payload, echoed);
    }

    [Fact]
    public async Task Two_hundred_clients_at_once_each_get_their_own_bytes_back()
    {
        await using var server = await StartAsync();
        int port = PortOf(server);
        var clients = await Task.WhenAll(Enumerable.Range(0, 200).Select(_ => ConnectAsync(port)));
        try
        {
            await Task.WhenAll(clients.Select(async (client, i) =>
            {
                Assert.Equal(GreetingBytes, await ReceiveExactlyAsync(client, GreetingBytes.Length));
                for (int round = 0; round < 5; round++)
                {
                    byte[] message = System.Text.Encoding.ASCII.GetBytes($"client {i} round {round}\n");
                    await client.SendAsync(message);
                    Assert.Equal(message, await ReceiveExactlyAsync(client, message.Length));
                }
            }));
            Assert.Equal(200, server.ActiveConnections);
        }
        finally
        {
            foreach (var client in clients)
            {
                client.Dispose();
            }
        }
    }

    [Fact]
    public async Task Half_close_echoes_everything_then_sends_EOF()
    {
        var closed = new TaskCompletionSource<ClosedConnection>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await StartAsync(new EchoServerOptions { SendGreeting = false });
        server.ConnectionClosed += c => closed.TrySetResult(c);
        using var client = await ConnectAsync(PortOf(server));
        var payload = new byte[300_000];
        Random.Shared.NextBytes(payload);

        var receive = ReceiveToEndAsync(client);
        await client.SendAsync(payload);
        client.Shutdown(SocketShutdown.Send);

        Assert.Equal(payload, await receive);
        var info = await closed.Task.WaitAsync(Deadline);
        Assert.Equal(CloseReason.PeerClosed, info.Reason);
        Assert.Equal(payload.Length, info.BytesIn);
        Assert.Equal(payload.Length, info.BytesOut);
    }

    [Fact]
    public async Task A_peer_reset_mid_transfer_is_recorded_and_other_clients_keep_being_served()
    {
        var reasons = new ConcurrentQueue<ClosedConnection>();
        var resetSeen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var server = await StartAsync(new EchoServerOptions { SendGreeting = false });
        server.ConnectionClosed += c =>
        {
            reasons.Enqueue(c);
            resetSeen.TrySetResult();
        };
        int port = PortOf(server);
        using var survivor = await ConnectAsync(port);

        using (var victim = await ConnectAsync(port))
        {
            // Push far more than the kernel buffers (10–15 MB per loopback connection here, up to ~70 MB
            // where receive buffers grow to tcp_rmem's 32 MiB) without reading, so the server is blocked
            // in a send when the RST arrives.
            var junk = new byte[1 << 20];
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            try
            {
                for (int i = 0; i < 160; i++)
                {
                    await victim.SendAsync(junk, cts.Token);
                }
            }
            catch (OperationCanceledException)
            {
                // Expected: TCP stopped us because the server stopped reading.
            }

            victim.LingerState = new LingerOption(true, 0); // close → RST
        }

        await resetSeen.Task.WaitAsync(Deadline);
        var closed = Assert.Single(reasons);
        Assert.Equal(CloseReason.PeerReset, closed.Reason);

        for (int i = 0; i < 3; i++)
        {
            byte[] message = [1, 2, 3, (byte)i];
            await survivor.SendAsync(message);
            Assert.Equal(message, await ReceiveExactlyAsync(survivor, message.Length));
        }
    }

    [Fact]
    public async Task Five_hundred_idle_connections_are_all_served()
    {
        // Many idle connections, then every one of them still echoes.
        await using var server = await StartAsync(new EchoServerOptions { SendGreeting = false });
        int port = PortOf(server);
        var clients = await Task.WhenAll(Enumerable.Range(0, 500).Select(_ => ConnectAsync(port)));
        try
        {
            await Task.WhenAll(clients.Select(async client =>
            {
                await client.SendAsync(new byte[] { 42 });
                Assert.Equal(new byte[] { 42 }, await ReceiveExactlyAsync(client, 1));
            }));
        }
        finally
        {
            foreach (var client in clients)
            {
                client.Dispose();
            }
        }
    }

    [Fact]
    public async Task Bind_to_a_port_in_use_fails_with_EADDRINUSE()
    {
        await using var first = await StartAsync();
        var second = new EchoServer(new EchoServerOptions { Port = PortOf(first) });
        var error = Assert.Throws<ListenFailedException>(second.Start);
        Assert.Equal(SocketError.AddressAlreadyInUse, error.SocketError);
        Assert.Contains("bind failed: Address already in use (EADDRINUSE)", error.Message, StringComparison.Ordinal);
    }
}

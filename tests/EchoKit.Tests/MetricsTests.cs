using System.Diagnostics.Metrics;
using System.Net;
using System.Net.Sockets;
using EchoKit.Tests.Infrastructure;
using static EchoKit.Tests.Infrastructure.Loopback;

namespace EchoKit.Tests;

/// <summary>The server's instruments (meter EchoKit), read with a MeterListener as dotnet-counters or an exporter would.</summary>
public sealed class MetricsTests
{
    private sealed class Recorder : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly Lock _gate = new();
        private readonly List<(string Name, double Value, Dictionary<string, string?> Tags)> _seen = [];

        public Recorder(Meter meter)
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter == meter)
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Add(i.Name, v, tags));
            _listener.SetMeasurementEventCallback<int>((i, v, tags, _) => Add(i.Name, v, tags));
            _listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Add(i.Name, v, tags));
            _listener.Start();
        }

        private void Add(string name, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var copy = new Dictionary<string, string?>();
            foreach (var tag in tags)
            {
                copy[tag.Key] = tag.Value?.ToString();
            }

            lock (_gate)
            {
                _seen.Add((name, value, copy));
            }
        }

        /// <summary>Observable instruments report when asked (a scrape); the others as they happen.</summary>
        public List<(string Name, double Value, Dictionary<string, string?> Tags)> Snapshot()
        {
            _listener.RecordObservableInstruments();
            lock (_gate)
            {
                var all = _seen.ToList();
                _seen.Clear();
                return all;
            }
        }

        public void Dispose() => _listener.Dispose();
    }

    [Theory]
    [InlineData(EchoEngine.Epoll)]
    [InlineData(EchoEngine.Socket)]
    public async Task Connections_are_counted_by_reason_and_refusals_by_error_type(EchoEngine engine)
    {
        if (engine == EchoEngine.Epoll)
        {
            Assert.SkipUnless(EchoServer.EpollSupported, "the epoll engine runs on Linux x86-64 only");
        }

        await using var server = new EchoServer(new EchoServerOptions { Port = 0, MaxConnections = 1, Engine = engine, SendGreeting = false });
        server.Start();
        using var recorder = new Recorder(server.Meter);
        int port = server.LocalEndPoints[0].Port;

        using (var served = await ConnectAsync(port))
        {
            await served.SendAsync("12345"u8.ToArray());
            await ReceiveExactlyAsync(served, 5);
            var open = recorder.Snapshot();
            Assert.Equal(1, Assert.Single(open, m => m.Name == "echokit.active_connections").Value);
            Assert.Equal(5, Assert.Single(open, m => m.Name == "echokit.bytes_received").Value); // counted while the connection is open

            using var busy = await ConnectAsync(port);
            Assert.StartsWith("server busy", System.Text.Encoding.ASCII.GetString(await ReceiveToEndAsync(busy)), StringComparison.Ordinal);
            served.Shutdown(SocketShutdown.Send);
            await ReceiveToEndAsync(served);
        }

        List<(string Name, double Value, Dictionary<string, string?> Tags)> seen = [];
        await ProcStats.WaitUntilAsync(() =>
        {
            seen.AddRange(recorder.Snapshot());
            return seen.Any(m => m.Name == "echokit.closed_connections");
        }, Deadline, () => string.Join(", ", seen.Select(m => m.Name)));

        var rejected = Assert.Single(seen, m => m.Name == "echokit.rejected_connections");
        Assert.Equal(1, rejected.Value);
        Assert.Equal("busy", rejected.Tags["error.type"]);
        Assert.Equal("tcp", rejected.Tags["network.transport"]);

        var closed = Assert.Single(seen, m => m.Name == "echokit.closed_connections");
        Assert.Equal("peer_closed", closed.Tags["echokit.close_reason"]);
        Assert.Equal("ipv4", closed.Tags["network.type"]);
        var duration = Assert.Single(seen, m => m.Name == "echokit.connection.duration");
        Assert.InRange(duration.Value, 0, 60);

        var after = recorder.Snapshot();
        Assert.Equal(5, after.Last(m => m.Name == "echokit.bytes_received").Value);
        Assert.Equal(5, after.Last(m => m.Name == "echokit.bytes_sent").Value);
        Assert.Equal(0, after.Last(m => m.Name == "echokit.active_connections").Value);
    }

    [Fact]
    public void A_refusal_names_its_error_type_from_the_stage()
    {
        ClosedConnection Refused(string detail) => new(1, new IPEndPoint(IPAddress.Loopback, 1), CloseReason.Refused, SocketError.Success, 0, 0, TimeSpan.Zero) { Detail = detail };
        Assert.Equal("proxy_header", Internal.ServerMetrics.ErrorType(Refused("proxy: no PROXY header")));
        Assert.Equal("tls_handshake", Internal.ServerMetrics.ErrorType(Refused("tls: not complete within 10s")));
        Assert.Equal("per_address_limit", Internal.ServerMetrics.ErrorType(Refused("over --max-per-address 4")));
        Assert.Equal("denied", Internal.ServerMetrics.ErrorType(Refused("--deny 10.0.0.0/8")));
        Assert.Equal("denied", Internal.ServerMetrics.ErrorType(Refused("access: not in any --allow")));
    }
}

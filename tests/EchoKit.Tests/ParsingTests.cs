using EchoKit.Cli;
using EchoKit.Client;

namespace EchoKit.Tests;

/// <summary>What users type: durations, C escapes and host:port forms.</summary>
public sealed class ParsingTests
{
    [Theory]
    [InlineData("500ms", 500)]
    [InlineData("50us", 0.05)]
    [InlineData("50µs", 0.05)]
    [InlineData("2s", 2000)]
    [InlineData("1.5s", 1500)]
    [InlineData("5m", 300_000)]
    [InlineData("1h", 3_600_000)]
    [InlineData("3", 3000)]
    [InlineData("0.25", 250)]
    [InlineData("0", 0)]
    public void Durations_accept_units_and_plain_seconds(string text, double milliseconds)
    {
        Assert.True(Durations.TryParse(text, out var value, out _));
        Assert.Equal(TimeSpan.FromMilliseconds(milliseconds), value);
    }

    [Theory]
    [InlineData("", "empty")]
    [InlineData("-1s", "negative")]
    [InlineData("soon", "not a duration")]
    [InlineData("5 parsecs", "not a duration")]
    [InlineData("1e12h", "too long")]
    [InlineData("NaN", "not a duration")]
    public void Durations_reject_nonsense_with_a_reason(string text, string reason)
    {
        Assert.False(Durations.TryParse(text, out _, out string error));
        Assert.Contains(reason, error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(500, "500ms")]
    [InlineData(0.05, "50us")]
    [InlineData(2000, "2s")]
    [InlineData(1500, "1.5s")]
    [InlineData(300_000, "5m")]
    [InlineData(3_600_000, "1h")]
    public void Durations_format_as_typed(double milliseconds, string text) =>
        Assert.Equal(text, Durations.Format(TimeSpan.FromMilliseconds(milliseconds)));

    [Fact]
    public void C_escapes_decode_to_the_exact_bytes()
    {
        Assert.True(CEscapes.TryDecode("a\\r\\n\\t\\0\\\\\\x41\\xff é", out var bytes, out _));
        Assert.Equal([(byte)'a', 13, 10, 9, 0, (byte)'\\', 0x41, 0xFF, (byte)' ', 0xC3, 0xA9], bytes);
    }

    [Theory]
    [InlineData("\\", "lone backslash")]
    [InlineData("\\q", "unknown escape \\q")]
    [InlineData("\\x4", "two hex digits")]
    [InlineData("\\xg1", "two hex digits")]
    public void C_escapes_reject_malformed_input(string text, string reason)
    {
        Assert.False(CEscapes.TryDecode(text, out _, out string error));
        Assert.Contains(reason, error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("localhost", null, "localhost", 8888)]
    [InlineData("localhost", "7", "localhost", 7)]
    [InlineData("example.org:80", null, "example.org", 80)]
    [InlineData("127.0.0.1:9000", null, "127.0.0.1", 9000)]
    [InlineData("::1", null, "::1", 8888)]
    [InlineData("::1", "8080", "::1", 8080)]
    [InlineData("[::1]:8888", null, "::1", 8888)]
    [InlineData("[fe80::1]", "22", "fe80::1", 22)]
    public void Connect_targets_accept_every_common_form(string hostText, string? portText, string host, int port)
    {
        Assert.True(ConnectCommand.TryParseTarget(hostText, portText, out string parsedHost, out int parsedPort, out string? error), error);
        Assert.Equal(host, parsedHost);
        Assert.Equal(port, parsedPort);
    }

    [Theory]
    [InlineData("[::1", null)]
    [InlineData("[::1]x", null)]
    [InlineData(":80", null)]
    [InlineData("host:0", null)]
    [InlineData("host:65536", null)]
    [InlineData("host:80", "81")]
    [InlineData("host", "-1")]
    public void Connect_targets_reject_malformed_forms(string hostText, string? portText) =>
        Assert.False(ConnectCommand.TryParseTarget(hostText, portText, out _, out _, out _));
}

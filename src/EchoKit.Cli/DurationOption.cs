using System.CommandLine;

namespace EchoKit.Cli;

/// <summary>A duration option and its default (null: no default, the feature is off unless given).</summary>
internal sealed record DurationOption(Option<TimeSpan?> Option, TimeSpan? Default)
{
    public TimeSpan? Get(ParseResult result) => result.GetValue(Option) ?? Default;
}

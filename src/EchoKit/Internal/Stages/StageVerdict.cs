namespace EchoKit.Internal.Stages;

/// <summary>A stage's answer: go on, or refuse the connection (closed at once, no greeting) and say why.</summary>
internal readonly record struct StageVerdict(string? RefusedBecause)
{
    public static StageVerdict Continue => default;

    public static StageVerdict Refuse(string reason) => new(reason);

    public bool Refused => RefusedBecause is not null;
}

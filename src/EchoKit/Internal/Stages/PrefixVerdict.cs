namespace EchoKit.Internal.Stages;

/// <summary>A prefix stage's answer: need more bytes, done (the prefix took <see cref="Consumed"/> bytes), or refused.</summary>
internal readonly record struct PrefixVerdict(int Consumed, string? RefusedBecause)
{
    public static PrefixVerdict NeedMore => new(-1, null);

    public static PrefixVerdict Done(int consumed) => new(consumed, null);

    public static PrefixVerdict Refuse(string reason) => new(-1, reason);

    public bool IsDone => Consumed >= 0;
}

namespace EchoKit.Bench;

/// <summary>A live look at a run, for progress displays.</summary>
public readonly record struct BenchProgress(string Phase, TimeSpan Elapsed, long Messages, long Mismatches, long Errors, int Connected);

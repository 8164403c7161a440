using EchoKit.Tests.Infrastructure;

namespace EchoKit.Tests;

/// <summary>
/// The README's copy-paste examples, run as written: the first sh block of a section, in bash, with `echokit` on the
/// PATH, in a network namespace of its own (its fixed ports cannot meet another test's or a server of the machine's).
/// </summary>
public sealed class ReadmeExampleTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("echokit-readme-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static string Readme()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            string path = Path.Combine(directory.FullName, "README.md");
            if (File.Exists(path) && File.Exists(Path.Combine(directory.FullName, "EchoKit.sln")))
            {
                return File.ReadAllText(path);
            }
        }

        throw new FileNotFoundException("README.md above " + AppContext.BaseDirectory);
    }

    /// <summary>The code blocks of a README section, in order (their info string, and text).</summary>
    private static List<(string Info, string Text)> Blocks(string heading)
    {
        string readme = Readme();
        int start = readme.IndexOf("\n" + heading + "\n", StringComparison.Ordinal);
        Assert.True(start >= 0, $"README has no section '{heading}'");
        int end = readme.IndexOf("\n## ", start + heading.Length + 1, StringComparison.Ordinal);
        string section = readme[start..(end < 0 ? readme.Length : end)];
        var blocks = new List<(string, string)>();
        var parts = section.Split("```");
        for (int i = 1; i + 1 < parts.Length; i += 2)
        {
            int newline = parts[i].IndexOf('\n', StringComparison.Ordinal);
            blocks.Add((parts[i][..newline], parts[i][(newline + 1)..]));
        }

        return blocks;
    }

    [Theory]
    [InlineData("## Metrics", "echokit_active_connections{")]
    [InlineData("## Configuration", null)]
    [InlineData("## Running it as a service (systemd)", "Now type something and i shall repeat what you type \nping\n")]
    [InlineData("## Session log", "\t6\nhello\n")]
    public async Task A_README_example_runs_as_written(string heading, string? expected)
    {
        var blocks = Blocks(heading);
        string example = blocks.First(b => b.Info == "sh").Text;
        foreach (string tool in new[] { "unshare", "curl", "systemd-socket-activate", "text2pcap", "tshark" }.Where(t => example.Contains(t + " ", StringComparison.Ordinal)))
        {
            Assert.SkipUnless(File.Exists($"/usr/bin/{tool}"), $"{tool} is not installed (.ci/run installs it)");
        }

        Assert.SkipUnless(File.Exists("/usr/bin/unshare"), "unshare (util-linux) is not installed");

        string bin = Directory.CreateDirectory(Path.Combine(_directory, "bin")).FullName;
        string wrapper = Path.Combine(bin, "echokit");
        File.WriteAllText(wrapper, $"#!/bin/sh\nexec {ChildProcess.EchokitForShell()} \"$@\"\n");
        string work = Directory.CreateDirectory(Path.Combine(_directory, "work")).FullName;
        string script = Path.Combine(_directory, "example.sh");
        File.WriteAllText(script, $"""
            set -eu
            chmod +x '{wrapper}'
            ip link set lo up
            export PATH='{bin}':"$PATH"
            cd '{work}'
            trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
            {example}
            """);

        var result = await ChildProcess.RunProgramAsync("unshare", TimeSpan.FromSeconds(60), null, "--net", "bash", script);
        Assert.True(result.ExitCode == 0, $"the example failed: {result}\nstdout:\n{result.StdoutText}\nscript:\n{example}");
        if (expected is not null)
        {
            Assert.Contains(expected, result.StdoutText, StringComparison.Ordinal);
        }
        else
        {
            // The section shows the output too (the next block without an info string): it is what the example prints.
            string shown = blocks.First(b => b.Info.Length == 0).Text;
            Assert.Equal(shown, result.StdoutText);
        }
    }
}

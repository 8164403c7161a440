using System.Text;

namespace EchoKit.Internal;

/// <summary>
/// A text file the user named (a --config file, an --allow-file), read whole but bounded: /dev/zero or a
/// runaway log given by mistake is refused at <paramref name="maxBytes"/> instead of filling memory.
/// </summary>
internal static class TextFile
{
    public const int DefaultMaxBytes = 16 << 20;

    /// <summary>The lines, or an <see cref="IOException"/> (with <see cref="FileErrorText"/>'s words) that says why not.</summary>
    public static string[] ReadLines(string path, int maxBytes = DefaultMaxBytes)
    {
        if (Directory.Exists(path))
        {
            throw new IOException("Is a directory (EISDIR)");
        }

        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, bufferSize: 1);
        var bytes = new MemoryStream();
        var chunk = new byte[64 * 1024];
        int read;
        while ((read = stream.Read(chunk)) > 0)
        {
            if (bytes.Length + read > maxBytes)
            {
                throw new IOException($"larger than {maxBytes >> 20} MiB: not a file of settings");
            }

            bytes.Write(chunk, 0, read);
        }

        string text = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false).GetString(bytes.GetBuffer(), 0, (int)bytes.Length);
        if (text.Length > 0 && text[0] == '\uFEFF')
        {
            text = text[1..];
        }

        var lines = text.Split('\n');
        if (lines.Length > 0 && lines[^1].Length == 0)
        {
            lines = lines[..^1];
        }

        return lines.Select(l => l.TrimEnd('\r')).ToArray();
    }
}

using System.Text;

namespace EchoKit.Client;

/// <summary>Decodes the C escapes that <c>echokit connect --send</c> accepts: \r \n \t \0 \\ \xHH.</summary>
internal static class CEscapes
{
    public static bool TryDecode(string text, out byte[] bytes, out string error)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<byte>(text.Length);
        error = "";
        bytes = [];
        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (c != '\\')
            {
                int n = char.IsHighSurrogate(c) && i + 1 < text.Length
                    ? Encoding.UTF8.GetBytes(text.AsSpan(i++, 2), utf8)
                    : Encoding.UTF8.GetBytes(text.AsSpan(i, 1), utf8);
                output.AddRange(utf8[..n]);
                continue;
            }

            if (++i >= text.Length)
            {
                error = "a lone backslash at the end; write \\\\ for a backslash";
                return false;
            }

            switch (text[i])
            {
                case 'r': output.Add((byte)'\r'); break;
                case 'n': output.Add((byte)'\n'); break;
                case 't': output.Add((byte)'\t'); break;
                case '0': output.Add(0); break;
                case '\\': output.Add((byte)'\\'); break;
                case 'x':
                    if (text.Length - i - 1 < 2
                        || !byte.TryParse(text.AsSpan(i + 1, 2), System.Globalization.NumberStyles.AllowHexSpecifier,
                            System.Globalization.CultureInfo.InvariantCulture, out byte value))
                    {
                        error = $"\\x must be followed by two hex digits (at position {i - 1})";
                        return false;
                    }

                    output.Add(value);
                    i += 2;
                    break;
                default:
                    error = $"unknown escape \\{text[i]}; use \\r \\n \\t \\0 \\\\ or \\xHH";
                    return false;
            }
        }

        bytes = output.ToArray();
        return true;
    }
}

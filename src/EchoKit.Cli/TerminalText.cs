using System.Buffers;
using System.Globalization;
using System.Text;

namespace EchoKit.Cli;

/// <summary>
/// Received bytes made safe for a terminal, as <c>cat -v</c> shows them: a peer's escape sequences
/// (<c>ESC ] 2 ; title BEL</c>, <c>ESC [ 2 J</c>) would otherwise retitle, clear or reprogram the operator's
/// terminal. Newline and tab pass; other C0 controls are <c>^X</c>, DEL is <c>^?</c>. Well-formed UTF-8 passes
/// (text in any script stays readable) except the C1 controls U+0080–U+009F, which some terminals obey;
/// those and bytes that are not UTF-8 are <c>M-</c> forms, as cat -v writes bytes above 127.
/// With a tag, every line is prefixed with its connection's id (<c>[3] </c>), and a chunk that does not
/// end a line is ended, so the next chunk's prefix starts a line of its own.
/// </summary>
internal static class TerminalText
{
    public static void Format(ReadOnlySpan<byte> bytes, bool escape, long? tag, IBufferWriter<byte> output)
    {
        bool lineStart = true;
        int i = 0;
        while (i < bytes.Length)
        {
            if (lineStart && tag is { } id)
            {
                Append(output, string.Create(CultureInfo.InvariantCulture, $"[{id}] "));
            }

            byte b = bytes[i];
            lineStart = b == (byte)'\n';
            if (!escape || b == (byte)'\n' || b == (byte)'\t' || (b >= 0x20 && b < 0x7F))
            {
                output.Write([b]);
                i++;
                continue;
            }

            if (b < 0x80)
            {
                output.Write([(byte)'^', b == 0x7F ? (byte)'?' : (byte)(b + 64)]);
                i++;
                continue;
            }

            // A well-formed UTF-8 sequence other than a C1 control passes whole.
            if (Rune.DecodeFromUtf8(bytes[i..], out var rune, out int length) == OperationStatus.Done && rune.Value >= 0xA0)
            {
                output.Write(bytes.Slice(i, length));
                i += length;
                continue;
            }

            int c1 = rune.Value is >= 0x80 and < 0xA0 && length == 2 ? rune.Value : b; // U+0080-U+009F shown as the byte it names
            MetaForm(output, (byte)c1);
            i += rune.Value is >= 0x80 and < 0xA0 && length == 2 ? 2 : 1;
        }

        if (tag is not null && !lineStart && bytes.Length > 0)
        {
            output.Write("\n"u8);
        }
    }

    /// <summary>cat -v's form of a byte above 127: <c>M-</c> and the form of its low seven bits.</summary>
    private static void MetaForm(IBufferWriter<byte> output, byte b)
    {
        output.Write("M-"u8);
        byte low = (byte)(b & 0x7F);
        if (low < 0x20)
        {
            output.Write([(byte)'^', (byte)(low + 64)]);
        }
        else if (low == 0x7F)
        {
            output.Write("^?"u8);
        }
        else
        {
            output.Write([low]);
        }
    }

    private static void Append(IBufferWriter<byte> output, string text) => output.Write(Encoding.ASCII.GetBytes(text));
}

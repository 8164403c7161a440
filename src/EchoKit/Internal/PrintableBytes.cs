using System.Text;

namespace EchoKit.Internal;

/// <summary>Bytes a peer sent, for a log line: printable ASCII as is, the rest as \r, \n, \xNN (never raw control bytes).</summary>
internal static class PrintableBytes
{
    public static string Of(ReadOnlySpan<byte> bytes)
    {
        var text = new StringBuilder();
        foreach (byte b in bytes)
        {
            text.Append(b switch
            {
                (byte)'\r' => "\\r",
                (byte)'\n' => "\\n",
                (byte)'"' or (byte)'\\' => "\\" + (char)b,
                >= 0x20 and < 0x7F => ((char)b).ToString(),
                _ => $"\\x{b:x2}",
            });
        }

        return text.ToString();
    }
}

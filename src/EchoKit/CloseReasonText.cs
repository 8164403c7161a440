namespace EchoKit;

/// <summary>Text forms of <see cref="CloseReason"/> as they appear in log lines.</summary>
internal static class CloseReasonText
{
    public static string Describe(this CloseReason reason) => reason switch
    {
        CloseReason.None => "open",
        CloseReason.PeerClosed => "closed by peer",
        CloseReason.PeerReset => "reset by peer",
        CloseReason.ServerShutdown => "server shutdown",
        CloseReason.ShutdownTimeout => "aborted at shutdown timeout",
        CloseReason.IdleTimeout => "idle timeout",
        CloseReason.SendTimeout => "send timeout",
        CloseReason.ServerBusy => "server busy",
        CloseReason.Error => "error",
        CloseReason.Refused => "refused",
        _ => reason.ToString(),
    };
}

namespace CriuSharp.KernelApi;

/// <summary>Signal numbers (asm-generic/signal.h; the same on x86_64, ppc64 and arm64).</summary>
public static class Signals
{
    public const int SIGKILL = 9;
    public const int SIGSEGV = 11;
    public const int SIGCONT = 18;
    public const int SIGSTOP = 19;
}

namespace CriuSharp.KernelApi;

/// <summary>
/// Thrown by convenience wrappers when a simulated system call fails; carries the errno Linux
/// would have returned. The system-call surface itself returns <see cref="SysResult"/> values.
/// </summary>
public sealed class KernelException(Errno errno, string message) : Exception($"{message}: {errno} ({ErrnoText.Describe(errno)})")
{
    public Errno Errno { get; } = errno;
}

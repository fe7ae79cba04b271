namespace CriuSharp.HostKernel;

/// <summary>What went wrong with the host kernel, so the command layer can pick an exit code.</summary>
public enum HostErrorKind
{
    /// <summary>The pid does not exist (ESRCH, no /proc/PID).</summary>
    NoSuchProcess,
    /// <summary>The process exited or was replaced while we worked on it.</summary>
    Vanished,
    /// <summary>EPERM/EACCES: another user's process, or ptrace/process_vm_readv refused.</summary>
    PermissionDenied,
    /// <summary>The running kernel lacks what was asked (a tracker, PAGEMAP_SCAN).</summary>
    Unsupported,
    /// <summary>Only a simulated machine can do this (spawn, run, restore into the host).</summary>
    SimulatorOnly,
    /// <summary>Any other failing system call.</summary>
    Io,
}

/// <summary>One line: what failed, on which pid, with the kernel's errno text.</summary>
public sealed class HostKernelException(HostErrorKind kind, string message, int? pid = null, int errno = 0)
    : Exception(pid is int p ? $"{message} (pid {p})" : message)
{
    public HostErrorKind Kind { get; } = kind;
    public int? Pid { get; } = pid;
    public int Errno { get; } = errno;

    /// <summary>Maps an errno of a call on <paramref name="pid"/> to the kind of failure.</summary>
    internal static HostKernelException FromErrno(int errno, string what, int pid)
    {
        var kind = errno switch
        {
            Interop.Libc.ESRCH => ProcFs.Exists(pid) ? HostErrorKind.Io : HostErrorKind.Vanished,
            Interop.Libc.EPERM or Interop.Libc.EACCES => HostErrorKind.PermissionDenied,
            _ => HostErrorKind.Io,
        };
        if (kind == HostErrorKind.Io && !ProcFs.Exists(pid))
            kind = HostErrorKind.Vanished;
        return new HostKernelException(kind, $"{what}: {Interop.Libc.ErrorText(errno)}", pid, errno);
    }
}

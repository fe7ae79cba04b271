namespace CriuSharp.Cli;

/// <summary>
/// Every exit status the <c>criu-sharp</c> command can return. The README lists them; scripts may
/// rely on the numbers, so a value never changes meaning once published.
/// </summary>
public enum ExitCode
{
    /// <summary>The command did what was asked.</summary>
    Success = 0,
    /// <summary>The command ran but its result is negative (a self-check failed, a verification mismatched).</summary>
    CheckFailed = 1,
    /// <summary>The command line itself is wrong: unknown option, missing argument, malformed value.</summary>
    Usage = 2,
    /// <summary>An input the user named is wrong: a file that does not parse, an unknown pid, an impossible mapping.</summary>
    BadInput = 3,
    /// <summary>An image file or directory is damaged, incomplete or inconsistent.</summary>
    BadImage = 4,
    /// <summary>The simulated kernel refused an operation (the message carries the errno).</summary>
    KernelError = 5,
    /// <summary>Another command holds the machine directory.</summary>
    Busy = 6,
    /// <summary>The host refused a resource: disk full, read-only filesystem, permission, missing native library.</summary>
    Environment = 7,
    /// <summary>A feature the chosen kernel or architecture profile does not offer.</summary>
    Unsupported = 8,
    /// <summary>The real process (--machine /proc) does not exist any more, or exited during the dump (its images stay marked incomplete).</summary>
    ProcessGone = 9,
    /// <summary>The real host refused access to the process (another user's process, ptrace or memory reads not permitted).</summary>
    PermissionDenied = 10,
    /// <summary>
    /// Collecting and freezing the tree took longer than --timeout: the dump stopped, the tree was
    /// thawed and the images directory is left marked incomplete.
    /// </summary>
    Timeout = 11,
    /// <summary>A bug: an unexpected exception. Run again with --verbose for the stack.</summary>
    Internal = 70,
}

using CriuSharp.Dumper;
using CriuSharp.SimKernel;

namespace CriuSharp.Cli.Rpc;

/// <summary>
/// Linux errno values the service puts in criu_resp.cr_errno (asm-generic/errno-base.h and
/// errno.h). CRIU itself sets EBADRQC for options it cannot use (criu/cr-service.c), ESRCH when the
/// task to dump does not exist and EEXIST when a pid to restore is taken; pycriu names those three.
/// </summary>
internal static class RpcErrno
{
    public const int ESRCH = 3;
    public const int EIO = 5;
    public const int ECHILD = 10;
    public const int EACCES = 13;
    public const int EBUSY = 16;
    public const int EEXIST = 17;
    public const int EINVAL = 22;
    public const int ENOSPC = 28;
    public const int EROFS = 30;
    public const int EBADRQC = 56;
    public const int ETIMEDOUT = 110;
    public const int EPROTO = 71;
    public const int EBADMSG = 74;
    public const int ELIBACC = 79;
    public const int EMSGSIZE = 90;
    public const int EOPNOTSUPP = 95;
    public const int ECANCELED = 125;
    public const int ENOTRECOVERABLE = 131;
}

/// <summary>A request the service refuses, with the errno and exit status that go with it.</summary>
internal sealed class RpcException(int errno, ExitCode code, string message) : Exception(message)
{
    public int Errno { get; } = errno;
    public ExitCode Code { get; } = code;
}

/// <summary>The client went away in the middle of a request (end of file on the socket).</summary>
internal sealed class RpcDisconnectedException() : Exception("the client closed the connection");

/// <summary>
/// Turns any failure of a request into what goes back to the client: an errno for cr_errno, the
/// command line's exit code for the same failure (<see cref="CliApp.Classify"/>, so a script sees
/// the same meaning from either front end) and one line for cr_errmsg.
/// </summary>
internal static class RpcErrors
{
    public static (int Errno, ExitCode Code, string Message) Classify(Exception ex)
    {
        if (ex is RpcException r)
            return (r.Errno, r.Code, CliApp.FirstLine(r.Message));
        var (code, message, _) = CliApp.Classify(ex);
        int errno = ex switch
        {
            KernelException k => (int)k.Errno,
            DumperException d when d.Message.StartsWith("no such process", StringComparison.Ordinal) => RpcErrno.ESRCH,
            DumperException d when d.Message.StartsWith("pid is already in use", StringComparison.Ordinal) => RpcErrno.EEXIST,
            UnauthorizedAccessException => RpcErrno.EACCES,
            DllNotFoundException => RpcErrno.ELIBACC,
            IOException io when io.HResult == RpcErrno.ENOSPC || io.Message.Contains("No space left", StringComparison.Ordinal) => RpcErrno.ENOSPC,
            IOException io when io.Message.Contains("Read-only file system", StringComparison.Ordinal) => RpcErrno.EROFS,
            _ => ForExitCode(code),
        };
        return (errno, code, CliApp.FirstLine(message));
    }

    /// <summary>The errno for a failure known only by its exit code (the README's table).</summary>
    public static int ForExitCode(ExitCode code) => code switch
    {
        ExitCode.Usage => RpcErrno.EBADRQC,
        ExitCode.BadInput => RpcErrno.EINVAL,
        ExitCode.BadImage => RpcErrno.EBADMSG,
        ExitCode.KernelError => RpcErrno.EINVAL,
        ExitCode.Busy => RpcErrno.EBUSY,
        ExitCode.Environment => RpcErrno.EIO,
        ExitCode.Unsupported => RpcErrno.EOPNOTSUPP,
        ExitCode.CheckFailed => RpcErrno.ECANCELED,
        ExitCode.Timeout => RpcErrno.ETIMEDOUT,
        _ => RpcErrno.ENOTRECOVERABLE,
    };
}

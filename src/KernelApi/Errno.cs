namespace CriuSharp.KernelApi;

/// <summary>Linux errno values (asm-generic/errno-base.h and errno.h), the numbers userspace sees.</summary>
public enum Errno
{
    None = 0,
    EPERM = 1,
    ENOENT = 2,
    ESRCH = 3,
    EINTR = 4,
    EIO = 5,
    EBADF = 9,
    EAGAIN = 11,
    ENOMEM = 12,
    EACCES = 13,
    EFAULT = 14,
    EBUSY = 16,
    EEXIST = 17,
    EINVAL = 22,
    ENOTTY = 25,
    ENOSPC = 28,
    ESPIPE = 29,
    ERANGE = 34,
    ENOSYS = 38,
    EOVERFLOW = 75,
    EOPNOTSUPP = 95,
    ETIMEDOUT = 110,
}

public static class ErrnoText
{
    public static string Describe(Errno e) => e switch
    {
        Errno.None => "Success",
        Errno.EPERM => "Operation not permitted",
        Errno.ENOENT => "No such file or directory",
        Errno.ESRCH => "No such process",
        Errno.EINTR => "Interrupted system call",
        Errno.EIO => "Input/output error",
        Errno.EBADF => "Bad file descriptor",
        Errno.EAGAIN => "Resource temporarily unavailable",
        Errno.ENOMEM => "Cannot allocate memory",
        Errno.EACCES => "Permission denied",
        Errno.EFAULT => "Bad address",
        Errno.EBUSY => "Device or resource busy",
        Errno.EEXIST => "File exists",
        Errno.EINVAL => "Invalid argument",
        Errno.ENOTTY => "Inappropriate ioctl for device",
        Errno.ENOSPC => "No space left on device",
        Errno.ESPIPE => "Illegal seek",
        Errno.ERANGE => "Numerical result out of range",
        Errno.ENOSYS => "Function not implemented",
        Errno.EOVERFLOW => "Value too large for defined data type",
        Errno.EOPNOTSUPP => "Operation not supported",
        Errno.ETIMEDOUT => "Connection timed out",
        _ => "Unknown error",
    };
}

/// <summary>
/// The result of a simulated system call: a non-negative value, or an errno. Mirrors the kernel's
/// convention of returning <c>-errno</c>, without the sign games.
/// </summary>
public readonly record struct SysResult(long Value, Errno Error)
{
    public bool Ok => Error == Errno.None;
    public static SysResult Success(long value = 0) => new(value, Errno.None);
    public static SysResult Fail(Errno e) => new(-1, e);
    public static implicit operator SysResult(Errno e) => e == Errno.None ? Success() : Fail(e);

    /// <summary>Returns the value, or throws <see cref="KernelException"/> naming <paramref name="what"/>.</summary>
    public long OrThrow(string what) => Ok ? Value : throw new KernelException(Error, what);

    public override string ToString() => Ok ? Value.ToString() : $"-1 {Error}";
}

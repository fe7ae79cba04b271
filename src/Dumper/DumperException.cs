namespace CriuSharp.Dumper;

/// <summary>
/// Every failure of a pre-dump, dump, restore or check that the user can act on: a task that is
/// gone, a parent image set that cannot be used, a page range no image holds, a restored range
/// whose contents differ from what was dumped. The message is one line naming the task, the
/// images directory and (where one exists) the address range, so the CLI prints it as is.
/// </summary>
public sealed class DumperException : Exception
{
    public DumperException(string message, int? pid = null, string? imagesDir = null,
        ulong? rangeStart = null, ulong? rangeEnd = null, Exception? inner = null, DumperErrorKind kind = DumperErrorKind.BadInput)
        : base(Compose(message, pid, imagesDir, rangeStart, rangeEnd), inner)
    {
        Kind = kind;
        Pid = pid;
        ImagesDir = imagesDir;
        RangeStart = rangeStart;
        RangeEnd = rangeEnd;
    }

    public int? Pid { get; }
    public DumperErrorKind Kind { get; }
    public string? ImagesDir { get; }
    public ulong? RangeStart { get; }
    public ulong? RangeEnd { get; }

    private static string Compose(string message, int? pid, string? dir, ulong? s, ulong? e)
    {
        var parts = new List<string>(3);
        if (pid is int p) parts.Add($"pid {p}");
        if (s is ulong a && e is ulong b) parts.Add($"range 0x{a:x}-0x{b:x}");
        if (dir is not null) parts.Add(dir);
        return parts.Count == 0 ? message : $"{message} ({string.Join(", ", parts)})";
    }
}

/// <summary>What kind of failure a <see cref="DumperException"/> is, for the command's exit code.</summary>
public enum DumperErrorKind
{
    /// <summary>Something the user named is wrong (the default).</summary>
    BadInput,
    /// <summary>The kernel lacks what was explicitly asked for (a tracker).</summary>
    Unsupported,
    /// <summary>Collecting and freezing the tree took longer than --timeout (CRIU's "Timeout reached").</summary>
    Timeout,
}

/// <summary>A condition the user should know about that does not stop the command (one line each).</summary>
public sealed record DumperWarning(string Code, string Message)
{
    public override string ToString() => Message;
}

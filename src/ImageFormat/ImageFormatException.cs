namespace CriuSharp.ImageFormat;

/// <summary>
/// An image file or directory that cannot be used as it is: wrong magic, truncated or oversized
/// entry, checksum mismatch, unknown compression, an incomplete directory, a broken parent link, or
/// pages that no image in the parent chain holds. The message always names the file, the image
/// kind and (where a byte position means something) the offset, so one line tells the user what
/// to look at.
/// </summary>
public class ImageFormatException : Exception
{
    public ImageFormatException(string file, string kind, long? offset, string problem, Exception? inner = null)
        : base(Compose(file, kind, offset, problem), inner)
    {
        FilePath = file;
        Kind = kind;
        Offset = offset;
        Problem = problem;
    }

    /// <summary>The file (or link, or directory) at fault.</summary>
    public string FilePath { get; }

    /// <summary>The image kind in crit's vocabulary (PAGEMAP, CORE, pages, parent link...).</summary>
    public string Kind { get; }

    /// <summary>Byte offset in <see cref="FilePath"/> where the problem was found, if meaningful.</summary>
    public long? Offset { get; }

    /// <summary>The problem alone, without the file/kind/offset prefix.</summary>
    public string Problem { get; }

    private static string Compose(string file, string kind, long? offset, string problem) =>
        offset is long o
            ? $"{file} ({kind} image, offset {o}): {problem}"
            : $"{file} ({kind}): {problem}";
}

/// <summary>
/// A page range that the pagemap of a task (followed through PE_PARENT holes into the parent
/// chain) does not cover. CRIU's restore fails the same way ("Missing ... in parent pagemap").
/// </summary>
public sealed class MissingPagesException(string file, ulong start, ulong end, string problem)
    : ImageFormatException(file, "PAGEMAP", null, $"pages 0x{start:x}-0x{end:x}: {problem}")
{
    /// <summary>First missing address.</summary>
    public ulong Start { get; } = start;

    /// <summary>End of the missing range, exclusive.</summary>
    public ulong End { get; } = end;
}

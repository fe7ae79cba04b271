namespace CriuSharp.ImageFormat;

/// <summary>
/// Writes a file so that a crash leaves either the previous file or none, never half of one: the
/// bytes go to a dot-prefixed temporary name next to the target, are flushed to disk, and only
/// then renamed over the target (rename is atomic within a directory on POSIX filesystems).
/// </summary>
public static class AtomicFile
{
    public static string TempNameFor(string path)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        return Path.Combine(dir, "." + Path.GetFileName(path) + ".tmp");
    }

    public static void Write(string path, Action<Stream> write)
    {
        var temp = TempNameFor(path);
        try
        {
            using (var fs = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
            {
                write(fs);
                fs.Flush(flushToDisk: true);
            }
            CrashPoints.Hit("file.tmp");
            File.Move(temp, path, overwrite: true);
            CrashPoints.Hit("file.renamed");
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    public static void Write(string path, ReadOnlyMemory<byte> bytes) => Write(path, s => s.Write(bytes.Span));

    internal static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

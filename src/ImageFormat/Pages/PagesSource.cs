using Microsoft.Win32.SafeHandles;

namespace CriuSharp.ImageFormat;

/// <summary>Positional access to the bytes of a pages-N.img: a file, or memory for benchmarks and tests.</summary>
public abstract class PagesSource : IDisposable
{
    public abstract long Length { get; }

    /// <summary>Label used in error messages (the file path).</summary>
    public abstract string Name { get; }

    /// <summary>Fills <paramref name="destination"/> from <paramref name="offset"/>; the caller has checked the range against <see cref="Length"/>.</summary>
    public abstract void ReadAt(long offset, Span<byte> destination);

    public void Dispose()
    {
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    protected virtual void Dispose(bool disposing) { }

    public static PagesSource OpenFile(string path) => new FilePagesSource(path);

    public static PagesSource FromMemory(ReadOnlyMemory<byte> bytes, string name = "<memory>") => new MemoryPagesSource(bytes, name);

    private sealed class FilePagesSource : PagesSource
    {
        private readonly SafeFileHandle _handle;

        public FilePagesSource(string path)
        {
            Name = path;
            try
            {
                _handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
            }
            catch (FileNotFoundException)
            {
                throw new ImageFormatException(path, "pages", null, "file does not exist (named by the pagemap head's pages_id)");
            }
            Length = RandomAccess.GetLength(_handle);
        }

        public override long Length { get; }
        public override string Name { get; }

        public override void ReadAt(long offset, Span<byte> destination)
        {
            while (destination.Length > 0)
            {
                int n = RandomAccess.Read(_handle, destination, offset);
                if (n <= 0)
                    throw new ImageFormatException(Name, "pages", offset, "file ended early");
                destination = destination.Slice(n);
                offset += n;
            }
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
                _handle.Dispose();
            base.Dispose(disposing);
        }
    }

    private sealed class MemoryPagesSource(ReadOnlyMemory<byte> bytes, string name) : PagesSource
    {
        public override long Length => bytes.Length;
        public override string Name => name;
        public override void ReadAt(long offset, Span<byte> destination) =>
            bytes.Span.Slice((int)offset, destination.Length).CopyTo(destination);
    }
}

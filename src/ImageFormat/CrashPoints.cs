namespace CriuSharp.ImageFormat;

/// <summary>
/// Named points between the file-system steps of writing an image directory (each file's write and
/// rename, each batch of a pages file, the manifest, the removal of the incomplete marker). Crash
/// tests install <see cref="Probe"/> to kill the process at the N-th point; unset, a hit costs one
/// null check and pages files are written to their FileStream directly.
/// </summary>
public static class CrashPoints
{
    public static Action<string>? Probe { get; set; }

    private static readonly AsyncLocal<bool> Quiet = new();

    public static void Hit(string name)
    {
        if (Probe is { } probe && !Quiet.Value)
            probe(name);
    }

    /// <summary>
    /// Runs <paramref name="work"/> (and the tasks it starts) past no crash point: work that is not the
    /// command's own, such as migrate's in-process warm-up, must not shift the points a test aims at.
    /// </summary>
    public static T Without<T>(Func<T> work)
    {
        bool was = Quiet.Value;
        Quiet.Value = true;
        try
        {
            return work();
        }
        finally
        {
            Quiet.Value = was;
        }
    }

    /// <summary>The stream itself, or (under a probe) a pass-through that hits once per write.</summary>
    internal static Stream Watch(Stream inner, string name) => Probe is null ? inner : new ProbeStream(inner, name);

    private sealed class ProbeStream(Stream inner, string name) : Stream
    {
        public override bool CanRead => false;
        public override bool CanSeek => inner.CanSeek;
        public override bool CanWrite => true;
        public override long Length => inner.Length;
        public override long Position { get => inner.Position; set => inner.Position = value; }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => inner.Seek(offset, origin);
        public override void SetLength(long value) => inner.SetLength(value);
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void Write(ReadOnlySpan<byte> buffer)
        {
            inner.Write(buffer);
            Hit(name);
        }
        protected override void Dispose(bool disposing)
        {
            if (disposing)
                inner.Dispose();
            base.Dispose(disposing);
        }
    }
}

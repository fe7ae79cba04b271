using System.Buffers.Binary;
using CriuSharp.ImageFormat.Images;
using Google.Protobuf;

namespace CriuSharp.ImageFormat;

/// <summary>
/// ghost-file-ID.img, the contents of a file that was unlinked while a task still used it
/// (criu/files-reg.c dump_ghost_file): the usual head (IMG_COMMON, GHOST_FILE), one size-prefixed
/// ghost_file_entry, then the file's bytes. Below <see cref="ChunksThreshold"/> the bytes follow
/// the entry raw up to the end of the image; from it on the entry has <c>chunks</c> and <c>size</c>
/// set and the bytes come as data runs, each a size-prefixed ghost_chunk_entry (len, off) followed
/// by len bytes, and the gaps between runs read as zeros. CRIU finds the runs with
/// SEEK_DATA/SEEK_HOLE; here a run is a stretch of pages that are not all zero, which gives back the
/// same bytes. crit decodes both forms (pycriu's ghost_file_handler).
/// </summary>
public static class GhostFile
{
    /// <summary>GHOST_CHUNKS_THRESH (criu/files-reg.c): regular files at least this large are stored in chunks.</summary>
    public const long ChunksThreshold = 1 << 20;

    private const int RunGranule = 4096;

    public static void WriteAtomic(string path, ghost_file_entry entry, ReadOnlyMemory<byte> contents) =>
        AtomicFile.Write(path, s => Write(s, entry, contents.Span));

    public static void Write(Stream stream, ghost_file_entry entry, ReadOnlySpan<byte> contents)
    {
        var e = entry.Clone();
        bool chunks = contents.Length >= ChunksThreshold;
        if (chunks)
        {
            e.Chunks = true;
            e.Size = (ulong)contents.Length;
        }
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(word, Magic.ImgCommon);
        stream.Write(word);
        BinaryPrimitives.WriteUInt32LittleEndian(word, Magic.GhostFile);
        stream.Write(word);
        WriteEntry(stream, e);
        if (!chunks)
        {
            stream.Write(contents);
            return;
        }
        for (int at = 0; at < contents.Length;)
        {
            if (IsZero(Granule(contents, at)))
            {
                at += RunGranule;
                continue;
            }
            int end = at;
            while (end < contents.Length && !IsZero(Granule(contents, end)))
                end = Math.Min(contents.Length, end + RunGranule);
            WriteEntry(stream, new ghost_chunk_entry { Off = (ulong)at, Len = (ulong)(end - at) });
            stream.Write(contents[at..end]);
            at = end;
        }
    }

    private static ReadOnlySpan<byte> Granule(ReadOnlySpan<byte> s, int at) => s.Slice(at, Math.Min(RunGranule, s.Length - at));

    private static bool IsZero(ReadOnlySpan<byte> s) => !s.ContainsAnyExcept((byte)0);

    private static void WriteEntry(Stream stream, IMessage m)
    {
        RequiredFields.Fill(m);
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(word, (uint)m.CalculateSize());
        stream.Write(word);
        stream.Write(m.ToByteArray());
    }

    /// <summary>Reads the entry and the file's bytes (size from <c>size</c> with chunks, else the rest of the image).</summary>
    public static (ghost_file_entry Entry, byte[] Contents) Read(string path)
    {
        byte[] data;
        try
        {
            data = File.ReadAllBytes(path);
        }
        catch (FileNotFoundException)
        {
            throw new ImageFormatException(path, ImageKind.GhostFile.Name, null, "file does not exist");
        }
        const string kind = "GHOST_FILE";
        if (data.Length < 8 || BinaryPrimitives.ReadUInt32LittleEndian(data) != Magic.ImgCommon
            || BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(4)) != Magic.GhostFile)
            throw new ImageFormatException(path, kind, 0, "not a ghost file image (wrong magic)");
        int pos = 8;
        var entry = ReadEntry(data, ref pos, path, ghost_file_entry.Parser);
        if (!entry.Chunks)
            return (entry, data[pos..]);
        if (!entry.HasSize || entry.Size > int.MaxValue)
            throw new ImageFormatException(path, kind, 8, entry.HasSize ? $"ghost file of {entry.Size} bytes is too large" : "chunked ghost file without a size");
        var contents = new byte[(int)entry.Size];
        while (pos < data.Length)
        {
            long at = pos;
            var c = ReadEntry(data, ref pos, path, ghost_chunk_entry.Parser);
            if (c.Off > entry.Size || c.Len > entry.Size - c.Off || c.Len > (ulong)(data.Length - pos))
                throw new ImageFormatException(path, kind, at, $"chunk of {c.Len} bytes at offset {c.Off} lies outside the file or the image");
            data.AsSpan(pos, (int)c.Len).CopyTo(contents.AsSpan((int)c.Off));
            pos += (int)c.Len;
        }
        return (entry, contents);
    }

    private static T ReadEntry<T>(byte[] data, ref int pos, string path, MessageParser<T> parser) where T : IMessage<T>
    {
        if (data.Length - pos < 4)
            throw new ImageFormatException(path, "GHOST_FILE", pos, "truncated entry size");
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(pos));
        if (size > (uint)(data.Length - pos - 4))
            throw new ImageFormatException(path, "GHOST_FILE", pos, $"entry of {size} bytes runs past the end of the image");
        try
        {
            var m = parser.ParseFrom(data, pos + 4, (int)size);
            pos += 4 + (int)size;
            return m;
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new ImageFormatException(path, "GHOST_FILE", pos, $"damaged entry: {e.Message}", e);
        }
    }
}

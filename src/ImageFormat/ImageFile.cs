using System.Buffers;
using System.Buffers.Binary;
using Google.Protobuf;

namespace CriuSharp.ImageFormat;

/// <summary>The entries of one protobuf image file, with the byte offset of each size prefix.</summary>
public sealed class ImageContents(string path, ImageKind kind, IReadOnlyList<IMessage> entries, IReadOnlyList<long> offsets)
{
    public string Path { get; } = path;
    public ImageKind Kind { get; } = kind;
    public IReadOnlyList<IMessage> Entries { get; } = entries;
    public IReadOnlyList<long> Offsets { get; } = offsets;
}

/// <summary>
/// CRIU's v1.1 framing of a protobuf image:
/// <code>
///   [IMG_COMMON|IMG_SERVICE] (absent in inventory.img)
///   [type magic]
///   { u32 LE size, size bytes of one message } * until EOF
/// </code>
/// The size prefix is a fixed 4-byte little-endian integer (protobuf.c pb_write_one), not a varint.
/// </summary>
public static class ImageFile
{
    /// <summary>
    /// No message CRIU writes for memory or tasks comes near this; a larger size prefix means a
    /// damaged file, and refusing it keeps a reader from allocating whatever the prefix claims.
    /// </summary>
    public const int MaxEntrySize = 64 << 20;

    public static void Write(Stream stream, ImageKind kind, IEnumerable<IMessage> entries)
    {
        var cos = new CodedOutputStream(stream, leaveOpen: true);
        if (kind.HeadMagic is uint head)
            cos.WriteFixed32(head);
        cos.WriteFixed32(kind.TypeMagic);
        int index = 0;
        foreach (var entry in entries)
        {
            var expected = kind.DescriptorForEntry(index);
            if (entry.Descriptor != expected)
                throw new ArgumentException($"entry {index} of a {kind.Name} image must be {expected.Name}, not {entry.Descriptor.Name}");
            RequiredFields.Fill(entry);
            cos.WriteFixed32((uint)entry.CalculateSize());
            entry.WriteTo(cos);
            index++;
        }
        cos.Flush();
    }

    public static byte[] Serialize(ImageKind kind, IEnumerable<IMessage> entries)
    {
        using var ms = new MemoryStream();
        Write(ms, kind, entries);
        return ms.ToArray();
    }

    /// <summary>
    /// Writes the file under a temporary name, flushes, then renames it into place. Our own fields
    /// (see <see cref="ExtFields"/>) go into the sidecar ext-&lt;name&gt;, written first, so the
    /// image itself holds CRIU's fields only.
    /// </summary>
    public static void WriteAtomic(string path, ImageKind kind, IEnumerable<IMessage> entries)
    {
        if (kind == ImageKind.ExtFields)
        {
            WriteAtomicUnsplit(path, kind, entries);
            return;
        }
        var (criu, ext) = ExtFields.Split(entries);
        ExtFields.WriteSidecar(path, criu, ext);
        WriteAtomicUnsplit(path, kind, criu);
    }

    internal static void WriteAtomicUnsplit(string path, ImageKind kind, IEnumerable<IMessage> entries) =>
        AtomicFile.Write(path, s => Write(s, kind, entries));

    public static void WriteAtomic(string path, ImageKind kind, params IMessage[] entries) =>
        WriteAtomic(path, kind, (IEnumerable<IMessage>)entries);

    /// <summary>
    /// Reads a whole image. With <paramref name="expected"/> the head is checked as strictly as
    /// CRIU does; without it the kind is taken from the magics (as crit does).
    /// </summary>
    public static ImageContents Read(string path, ImageKind? expected = null)
    {
        FileStream fs;
        try
        {
            fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (FileNotFoundException)
        {
            throw new ImageFormatException(path, expected?.Name ?? "unknown", null, "file does not exist");
        }
        ImageContents contents;
        using (fs)
            contents = Read(fs, path, expected);
        ExtFields.MergeSidecar(path, contents.Kind, contents.Entries);
        return contents;
    }

    public static ImageContents Parse(ReadOnlySpan<byte> data, string label, ImageKind? expected = null)
    {
        using var ms = new MemoryStream(data.ToArray(), writable: false);
        return Read(ms, label, expected);
    }

    public static T ReadSingle<T>(string path, ImageKind kind) where T : IMessage
    {
        var contents = Read(path, kind);
        if (contents.Entries.Count != 1)
            throw new ImageFormatException(path, kind.Name, kind.PreambleLength,
                $"expected exactly one {kind.Entry.Name}, found {contents.Entries.Count}");
        return (T)contents.Entries[0];
    }

    private static ImageContents Read(Stream stream, string path, ImageKind? expected)
    {
        long length = stream.Length;
        Span<byte> word = stackalloc byte[4];
        var kind = ReadMagics(stream, path, length, expected, word);
        long pos = kind.PreambleLength;

        var entries = new List<IMessage>();
        var offsets = new List<long>();
        byte[] buffer = ArrayPool<byte>.Shared.Rent(4096);
        try
        {
            while (pos < length)
            {
                long entryOffset = pos;
                if (length - pos < 4)
                    throw new ImageFormatException(path, kind.Name, entryOffset,
                        $"truncated entry: {length - pos} trailing byte(s) where a 4-byte size prefix should be");
                stream.ReadExactly(word);
                uint size = BinaryPrimitives.ReadUInt32LittleEndian(word);
                pos += 4;
                if (size > MaxEntrySize)
                    throw new ImageFormatException(path, kind.Name, entryOffset,
                        $"entry size {size} exceeds the {MaxEntrySize}-byte limit");
                if (size > length - pos)
                    throw new ImageFormatException(path, kind.Name, entryOffset,
                        $"entry size {size} runs past the end of the file ({length - pos} byte(s) left)");
                if (buffer.Length < size)
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = ArrayPool<byte>.Shared.Rent((int)size);
                }
                stream.ReadExactly(buffer, 0, (int)size);
                pos += size;

                var descriptor = kind.DescriptorForEntry(entries.Count);
                IMessage message;
                try
                {
                    message = descriptor.Parser.ParseFrom(buffer, 0, (int)size);
                }
                catch (InvalidProtocolBufferException e)
                {
                    throw new ImageFormatException(path, kind.Name, entryOffset,
                        $"entry {entries.Count} is not a valid {descriptor.Name}: {e.Message}", e);
                }
                var missing = RequiredFields.Missing(message);
                if (missing.Count > 0)
                    throw new ImageFormatException(path, kind.Name, entryOffset,
                        $"entry {entries.Count} ({descriptor.Name}) lacks required field(s): {string.Join(",", missing)}");
                entries.Add(message);
                offsets.Add(entryOffset);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
        if (kind.Head is not null && entries.Count == 0)
            throw new ImageFormatException(path, kind.Name, kind.PreambleLength, $"missing the {kind.Head.Name} entry");
        return new ImageContents(path, kind, entries, offsets);
    }

    private static ImageKind ReadMagics(Stream stream, string path, long length, ImageKind? expected, Span<byte> word)
    {
        string kindName = expected?.Name ?? "unknown";
        if (length < 4)
            throw new ImageFormatException(path, kindName, 0, $"file is {length} byte(s) long, too short for a magic");
        stream.ReadExactly(word);
        uint first = BinaryPrimitives.ReadUInt32LittleEndian(word);

        if (expected is not null)
        {
            if (expected.HeadMagic is uint head)
            {
                if (first != head)
                    throw new ImageFormatException(path, kindName, 0,
                        $"head magic 0x{first:x8} does not match, expected 0x{head:x8}");
                if (length < 8)
                    throw new ImageFormatException(path, kindName, 4, "file ends before the type magic");
                stream.ReadExactly(word);
                uint type = BinaryPrimitives.ReadUInt32LittleEndian(word);
                if (type != expected.TypeMagic)
                    throw new ImageFormatException(path, kindName, 4,
                        $"wrong magic 0x{type:x8}, expected 0x{expected.TypeMagic:x8} ({expected.Name}){DescribeMagic(type)}");
            }
            else if (first != expected.TypeMagic)
            {
                throw new ImageFormatException(path, kindName, 0,
                    $"wrong magic 0x{first:x8}, expected 0x{expected.TypeMagic:x8} ({expected.Name}){DescribeMagic(first)}");
            }
            return expected;
        }

        if (first is Magic.ImgCommon or Magic.ImgService)
        {
            if (length < 8)
                throw new ImageFormatException(path, kindName, 4, "file ends before the type magic");
            stream.ReadExactly(word);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(word);
            if (!ImageKind.TryFromTypeMagic(type, out var kind) || kind.HeadMagic is null)
                throw new ImageFormatException(path, kindName, 4, $"unknown magic 0x{type:x8}");
            if (kind.HeadMagic != first)
                throw new ImageFormatException(path, kind.Name, 0,
                    $"head magic 0x{first:x8} does not match, expected 0x{kind.HeadMagic:x8}");
            return kind;
        }
        if (ImageKind.TryFromTypeMagic(first, out var headless) && headless.HeadMagic is null)
            return headless;
        throw new ImageFormatException(path, kindName, 0,
            $"unknown magic 0x{first:x8} (pages-N.img and other raw images have no magic and no entries)");
    }

    private static string DescribeMagic(uint magic) =>
        ImageKind.TryFromTypeMagic(magic, out var k) ? $"; that is a {k.Name} image" : "";
}

using System.Collections;
using CriuSharp.ImageFormat.Images;
using Google.Protobuf;
using Google.Protobuf.Reflection;

namespace CriuSharp.ImageFormat;

/// <summary>
/// Our fields of CRIU's messages (numbered <see cref="FirstNumber"/> and up: compression, block
/// sizes, simulator state, extra statistics) never go into CRIU's image files. A CRIU image holds
/// CRIU's fields only, so crit's decode → encode, which drops every field its schema lacks, gives
/// back the same bytes; our fields go into a sidecar <c>ext-&lt;image&gt;</c> next to it, framed as
/// a CRIU image with our own magic. Reading an image through a path merges its sidecar back.
/// An image that still carries such fields inline (written before sidecars) reads the same way.
/// </summary>
public static class ExtFields
{
    /// <summary>CRIU's image protos stop at 30 and rpc.proto at 71; ours start here.</summary>
    public const int FirstNumber = 1000;

    public static string SidecarPath(string imagePath) =>
        Path.Combine(Path.GetDirectoryName(imagePath) ?? "", ImageNames.Ext(Path.GetFileName(imagePath)));

    /// <summary>The entries split into what CRIU's image holds and the sidecar's entries (empty when none of ours is set).</summary>
    public static (List<IMessage> Criu, List<ext_fields_entry> Ext) Split(IEnumerable<IMessage> entries)
    {
        var criu = new List<IMessage>();
        var ext = new List<ext_fields_entry>();
        foreach (var e in entries)
        {
            if (e is pagemap_entry pe)
            {
                // Most of a dump's entries: split by the generated accessors (see SplitPagemapEntry).
                var (c, x) = SplitPagemapEntry(pe);
                if (x is not null)
                    ext.Add(new ext_fields_entry { Index = (uint)criu.Count, Fields = x.ToByteString() });
                criu.Add(c);
            }
            else if (ExtOnly(e) is { } only)
            {
                ext.Add(new ext_fields_entry { Index = (uint)criu.Count, Fields = only.ToByteString() });
                criu.Add(CriuOnly(e));
            }
            else
                criu.Add(e);
        }
        return (criu, ext);
    }

    /// <summary>
    /// What <see cref="ExtOnly"/> and <see cref="CriuOnly"/> give for a pagemap entry, without
    /// reflection: a pre-dump with scattered changed pages writes thousands of entries (5,257 took
    /// 6-25 ms through the reflective path). The fields of ours are named here, so
    /// <see cref="PagemapEntryExtNumbers"/> lists them for a test that fails when pagemap.proto
    /// gains one this does not know.
    /// </summary>
    internal static (pagemap_entry Criu, pagemap_entry? Ext) SplitPagemapEntry(pagemap_entry e)
    {
        if (!e.HasZeroPages && e.BlockSizes.Count == 0 && !e.HasRawBlocks && e.BlockChecksums.Count == 0
            && e.DeltaSizes.Count == 0 && e.DeltaChecksums.Count == 0)
            return (e, null);
        var ext = new pagemap_entry();
        var criu = e.Clone(); // keeps CRIU's fields and any unknown ones
        if (e.HasZeroPages)
        {
            ext.ZeroPages = e.ZeroPages;
            criu.ClearZeroPages();
        }
        if (e.HasRawBlocks)
        {
            ext.RawBlocks = e.RawBlocks;
            criu.ClearRawBlocks();
        }
        ext.BlockSizes.Add(e.BlockSizes);
        ext.BlockChecksums.Add(e.BlockChecksums);
        ext.DeltaSizes.Add(e.DeltaSizes);
        ext.DeltaChecksums.Add(e.DeltaChecksums);
        criu.BlockSizes.Clear();
        criu.BlockChecksums.Clear();
        criu.DeltaSizes.Clear();
        criu.DeltaChecksums.Clear();
        return (criu, ext);
    }

    /// <summary>The field numbers of ours that <see cref="SplitPagemapEntry"/> moves.</summary>
    internal static readonly int[] PagemapEntryExtNumbers =
    [
        pagemap_entry.ZeroPagesFieldNumber, pagemap_entry.BlockSizesFieldNumber, pagemap_entry.RawBlocksFieldNumber,
        pagemap_entry.BlockChecksumsFieldNumber, pagemap_entry.DeltaSizesFieldNumber, pagemap_entry.DeltaChecksumsFieldNumber,
    ];

    /// <summary>A copy of <paramref name="m"/> holding only our fields (nested messages keep their path), or null when it has none.</summary>
    internal static IMessage? ExtOnly(IMessage m)
    {
        IMessage? copy = null;
        foreach (var f in m.Descriptor.Fields.InFieldNumberOrder())
        {
            var a = f.Accessor;
            if (f.FieldNumber >= FirstNumber)
            {
                if (!IsSet(m, f))
                    continue;
                copy ??= New(m.Descriptor);
                if (f.IsRepeated)
                {
                    var to = (IList)a.GetValue(copy);
                    foreach (var item in (IList)a.GetValue(m))
                        to.Add(item);
                }
                else
                    a.SetValue(copy, a.GetValue(m));
            }
            else if (f.FieldType == FieldType.Message)
            {
                if (f.IsRepeated)
                {
                    // None of CRIU's repeated messages carries a field of ours; one that did could
                    // not be told apart by index after an edit, so it is refused rather than lost.
                    foreach (var item in (IList)a.GetValue(m))
                        if (ExtOnly((IMessage)item!) is not null)
                            throw new NotSupportedException($"{m.Descriptor.Name}.{f.Name}: fields >= {FirstNumber} inside repeated messages are not supported");
                }
                else if (a.HasValue(m) && ExtOnly((IMessage)a.GetValue(m)) is { } sub)
                {
                    copy ??= New(m.Descriptor);
                    a.SetValue(copy, sub);
                }
            }
        }
        return copy;
    }

    /// <summary>A copy of <paramref name="m"/> without any of our fields, at any depth.</summary>
    internal static IMessage CriuOnly(IMessage m)
    {
        var copy = m.Descriptor.Parser.ParseFrom(m.ToByteString());
        Strip(copy);
        return copy;
    }

    private static void Strip(IMessage m)
    {
        foreach (var f in m.Descriptor.Fields.InFieldNumberOrder())
        {
            var a = f.Accessor;
            if (f.FieldNumber >= FirstNumber)
                a.Clear(m);
            else if (f.FieldType == FieldType.Message)
            {
                if (f.IsRepeated)
                    foreach (var item in (IList)a.GetValue(m))
                        Strip((IMessage)item!);
                else if (a.HasValue(m))
                    Strip((IMessage)a.GetValue(m));
            }
        }
    }

    /// <summary>Whether a field of CRIU's (below <see cref="FirstNumber"/>) carries a value, at any depth.</summary>
    private static bool HasCriuFields(IMessage m)
    {
        foreach (var f in m.Descriptor.Fields.InFieldNumberOrder())
        {
            if (f.FieldNumber >= FirstNumber || !IsSet(m, f))
                continue;
            if (f.FieldType != FieldType.Message)
                return true;
            var subs = f.IsRepeated ? ((IList)f.Accessor.GetValue(m)).Cast<IMessage>() : [(IMessage)f.Accessor.GetValue(m)];
            if (f.IsRepeated || subs.Any(HasCriuFields))
                return true;
        }
        return false;
    }

    private static bool IsSet(IMessage m, FieldDescriptor f) =>
        f.IsRepeated ? ((IList)f.Accessor.GetValue(m)).Count > 0 : f.Accessor.HasValue(m);

    private static IMessage New(MessageDescriptor d) => d.Parser.ParseFrom(ReadOnlySpan<byte>.Empty);

    /// <summary>Writes (or removes, when there is nothing of ours) the sidecar of the image at <paramref name="imagePath"/>.</summary>
    internal static void WriteSidecar(string imagePath, IReadOnlyList<IMessage> criuEntries, List<ext_fields_entry> ext)
    {
        string side = SidecarPath(imagePath);
        if (ext.Count == 0)
        {
            File.Delete(side);
            return;
        }
        var head = new ext_fields_head { Image = Path.GetFileName(imagePath), Entries = (uint)criuEntries.Count };
        ImageFile.WriteAtomicUnsplit(side, ImageKind.ExtFields, [head, .. ext]);
    }

    /// <summary>Merges the sidecar of <paramref name="imagePath"/>, if there is one, into its entries.</summary>
    internal static void MergeSidecar(string imagePath, ImageKind kind, IReadOnlyList<IMessage> entries)
    {
        string side = SidecarPath(imagePath);
        if (kind == ImageKind.ExtFields || !File.Exists(side))
            return;
        var contents = ImageFile.Read(side, ImageKind.ExtFields);
        var head = (ext_fields_head)contents.Entries[0];
        string name = Path.GetFileName(imagePath);
        if (head.Image != name)
            throw new ImageFormatException(side, kind.Name, null, $"is the sidecar of {head.Image}, not of {name}");
        if (head.Entries != entries.Count)
            throw new ImageFormatException(imagePath, kind.Name, null,
                $"has {entries.Count} entries but its sidecar {Path.GetFileName(side)} was written for {head.Entries}: the image was changed after it was written");
        long prev = -1;
        foreach (var e in contents.Entries.Skip(1).Cast<ext_fields_entry>())
        {
            if (e.Index <= prev || e.Index >= entries.Count)
                throw new ImageFormatException(side, ImageKind.ExtFields.Name, null, $"entry index {e.Index} is out of order or beyond the image's {entries.Count} entries");
            prev = e.Index;
            var target = entries[(int)e.Index];
            IMessage fields;
            try
            {
                fields = target.Descriptor.Parser.ParseFrom(e.Fields);
            }
            catch (InvalidProtocolBufferException x)
            {
                throw new ImageFormatException(side, ImageKind.ExtFields.Name, null, $"entry for index {e.Index} is not a valid {target.Descriptor.Name}: {x.Message}", x);
            }
            // Only our own fields may come from a sidecar: CRIU's stay as CRIU's image has them.
            if (HasCriuFields(fields))
                throw new ImageFormatException(side, ImageKind.ExtFields.Name, null, $"entry for index {e.Index} carries fields below {FirstNumber}, which belong to the CRIU image");
            target.MergeFrom(e.Fields);
        }
    }
}

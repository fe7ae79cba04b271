using System.Diagnostics.CodeAnalysis;
using CriuSharp.ImageFormat.Images;
using Google.Protobuf;
using Google.Protobuf.Reflection;

namespace CriuSharp.ImageFormat;

/// <summary>
/// One protobuf image type: its name in crit's magic table, its magics and the message each entry
/// holds. PAGEMAP is the one "head then entries" type: its first entry is a pagemap_head.
/// </summary>
public sealed class ImageKind
{
    private ImageKind(string name, uint typeMagic, uint? headMagic, MessageDescriptor entry, MessageDescriptor? head = null)
    {
        Name = name;
        TypeMagic = typeMagic;
        HeadMagic = headMagic;
        Entry = entry;
        Head = head;
    }

    /// <summary>Name as in pycriu's magic table and crit's JSON <c>"magic"</c> key.</summary>
    public string Name { get; }

    public uint TypeMagic { get; }

    /// <summary>IMG_COMMON, IMG_SERVICE, or null for inventory.img, which CRIU writes without a head.</summary>
    public uint? HeadMagic { get; }

    /// <summary>The message of every entry (after the head entry, for PAGEMAP).</summary>
    public MessageDescriptor Entry { get; }

    /// <summary>The message of the first entry when the type has a head entry (PAGEMAP only).</summary>
    public MessageDescriptor? Head { get; }

    /// <summary>Bytes before the first entry.</summary>
    public int PreambleLength => HeadMagic is null ? 4 : 8;

    public MessageDescriptor DescriptorForEntry(int index) => index == 0 && Head is not null ? Head : Entry;

    public override string ToString() => Name;

    public static readonly ImageKind Inventory = new("INVENTORY", Magic.Inventory, null, inventory_entry.Descriptor);
    public static readonly ImageKind Pstree = new("PSTREE", Magic.Pstree, Magic.ImgCommon, pstree_entry.Descriptor);
    public static readonly ImageKind Core = new("CORE", Magic.Core, Magic.ImgCommon, core_entry.Descriptor);
    public static readonly ImageKind Ids = new("IDS", Magic.Ids, Magic.ImgCommon, task_kobj_ids_entry.Descriptor);
    public static readonly ImageKind Mm = new("MM", Magic.Mm, Magic.ImgCommon, mm_entry.Descriptor);
    public static readonly ImageKind Pagemap = new("PAGEMAP", Magic.Pagemap, Magic.ImgCommon, pagemap_entry.Descriptor, pagemap_head.Descriptor);
    public static readonly ImageKind Files = new("FILES", Magic.Files, Magic.ImgCommon, file_entry.Descriptor);
    public static readonly ImageKind RegFiles = new("REG_FILES", Magic.RegFiles, Magic.ImgCommon, reg_file_entry.Descriptor);
    public static readonly ImageKind RemapFpath = new("REMAP_FPATH", Magic.RemapFpath, Magic.ImgCommon, remap_file_path_entry.Descriptor);
    /// <summary>
    /// ghost-file-ID.img: one ghost_file_entry followed by the file's bytes (or by chunk entries,
    /// each followed by its bytes), so it is read and written by <see cref="ImageFormat.GhostFile"/>,
    /// not as a list of entries, and is not in <see cref="All"/>.
    /// </summary>
    public static readonly ImageKind GhostFile = new("GHOST_FILE", Magic.GhostFile, Magic.ImgCommon, ghost_file_entry.Descriptor);
    public static readonly ImageKind Fdinfo = new("FDINFO", Magic.Fdinfo, Magic.ImgCommon, fdinfo_entry.Descriptor);
    public static readonly ImageKind Creds = new("CREDS", Magic.Creds, Magic.ImgCommon, creds_entry.Descriptor);
    public static readonly ImageKind Stats = new("STATS", Magic.Stats, Magic.ImgService, stats_entry.Descriptor);
    public static readonly ImageKind SimState = new("SIM_STATE", Magic.SimState, Magic.ImgCommon, sim_state_entry.Descriptor);
    public static readonly ImageKind ExtFields = new("EXT_FIELDS", Magic.ExtFields, Magic.ImgCommon, ext_fields_entry.Descriptor, ext_fields_head.Descriptor);
    public static readonly ImageKind PageDigests = new("PAGE_DIGESTS", Magic.PageDigests, Magic.ImgCommon, page_digests_entry.Descriptor);

    public static IReadOnlyList<ImageKind> All { get; } =
        [Inventory, Pstree, Core, Ids, Mm, Pagemap, Files, RegFiles, RemapFpath, Fdinfo, Creds, Stats, SimState, ExtFields, PageDigests];

    public static bool TryFromTypeMagic(uint magic, [NotNullWhen(true)] out ImageKind? kind)
    {
        foreach (var k in All)
        {
            if (k.TypeMagic == magic)
            {
                kind = k;
                return true;
            }
        }
        kind = null;
        return false;
    }

    public static bool TryFromName(string name, [NotNullWhen(true)] out ImageKind? kind)
    {
        foreach (var k in All)
        {
            if (string.Equals(k.Name, name, StringComparison.OrdinalIgnoreCase))
            {
                kind = k;
                return true;
            }
        }
        kind = null;
        return false;
    }

    /// <summary>Guesses the kind from CRIU's file-name patterns (image-desc.c); null for raw or unknown files.</summary>
    public static ImageKind? FromFileName(string fileName)
    {
        var name = System.IO.Path.GetFileName(fileName);
        if (name.StartsWith(ImageNames.ExtPrefix, StringComparison.Ordinal)) return ExtFields;
        if (name == ImageNames.Inventory) return Inventory;
        if (name == ImageNames.Pstree) return Pstree;
        if (name == ImageNames.Files) return Files;
        if (name == ImageNames.RegFiles) return RegFiles;
        if (name == ImageNames.RemapFpath) return RemapFpath;
        if (name is ImageNames.StatsDump or ImageNames.StatsRestore) return Stats;
        if (name.StartsWith("core-", StringComparison.Ordinal)) return Core;
        if (name.StartsWith("ids-", StringComparison.Ordinal)) return Ids;
        if (name.StartsWith("mm-", StringComparison.Ordinal)) return Mm;
        if (name.StartsWith("pagemap-", StringComparison.Ordinal)) return Pagemap;
        if (name.StartsWith("fdinfo-", StringComparison.Ordinal)) return Fdinfo;
        if (name.StartsWith("creds-", StringComparison.Ordinal)) return Creds;
        if (name.StartsWith("sim-", StringComparison.Ordinal)) return SimState;
        if (name.StartsWith("page-digests-", StringComparison.Ordinal)) return PageDigests;
        return null;
    }

    internal IMessage NewMessage(int index) => DescriptorForEntry(index).Parser.ParseFrom(ReadOnlySpan<byte>.Empty);
}

/// <summary>CRIU's file names (criu/image-desc.c). stats-* deliberately have no .img suffix.</summary>
public static class ImageNames
{
    public const string Inventory = "inventory.img";
    public const string Pstree = "pstree.img";
    public const string Files = "files.img";
    public const string RegFiles = "reg-files.img";
    public const string RemapFpath = "remap-fpath.img";
    public const string StatsDump = "stats-dump";
    public const string StatsRestore = "stats-restore";
    public const string ParentLink = "parent";

    /// <summary>Present while a directory is being written; removed by Commit as the last step.</summary>
    public const string IncompleteMarker = ".criu-sharp-incomplete";

    public static string Core(int tid) => $"core-{tid}.img";
    public static string Ids(int pid) => $"ids-{pid}.img";
    public static string Mm(int pid) => $"mm-{pid}.img";
    public static string Pagemap(int pid) => $"pagemap-{pid}.img";
    public static string ShmemPagemap(ulong shmid) => $"pagemap-shmem-{shmid}.img";
    public static string Pages(uint pagesId) => $"pages-{pagesId}.img";
    /// <summary>criu-sharp: the PE_DELTA pages of pagemap_head.pages_id, back to back (no framing).</summary>
    public static string Deltas(uint pagesId) => $"deltas-{pagesId}.img";
    /// <summary>ghost-file-ID.img, the id in hex as CRIU's "ghost-file-%x".</summary>
    public static string GhostFile(uint ghostId) => $"ghost-file-{ghostId:x}.img";
    public static string Fdinfo(uint filesId) => $"fdinfo-{filesId}.img";
    public static string SimState(int pid) => $"sim-{pid}.img";
    public static string PageDigests(int pid) => $"page-digests-{pid}.img";

    /// <summary>ext-&lt;image&gt;: our fields of that CRIU image (see <see cref="ImageFormat.ExtFields"/>).</summary>
    public const string ExtPrefix = "ext-";
    public static string Ext(string imageFileName) => ExtPrefix + imageFileName;

    /// <summary>
    /// Whether a directory entry of an image directory is ours to replace: a CRIU image file
    /// (*.img) or its ext- sidecar, the stats files, the parent link, the incomplete marker, the manifest, or a
    /// temporary file an interrupted atomic write left (.NAME.tmp…). Anything else belongs to the
    /// user, and a dump refuses to write into a directory that holds it.
    /// </summary>
    public static bool BelongsToImageDirectory(string name) =>
        name.EndsWith(".img", StringComparison.Ordinal) || name is StatsDump or StatsRestore
        or ParentLink or IncompleteMarker or Manifest.FileName
        || name.StartsWith(ExtPrefix, StringComparison.Ordinal) && BelongsToImageDirectory(name[ExtPrefix.Length..])
        || name.StartsWith('.') && name.Contains(".tmp", StringComparison.Ordinal);
}

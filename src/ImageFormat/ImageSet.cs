using System.Globalization;
using CriuSharp.ImageFormat.Images;

namespace CriuSharp.ImageFormat;

/// <summary>
/// A committed images directory opened for reading, with its parent chain:
/// <code>
///   dump/ ──parent──▶ ../pre2/ ──parent──▶ ../pre1/   (relative symlinks, as CRIU makes them)
/// </code>
/// Only pagemaps and pages are taken from parents; everything else comes from the newest set.
/// Following <c>parent</c> detects dangling links, symlink loops and directories that loop back
/// to one already in the chain.
/// </summary>
public sealed class ImageSet
{
    /// <summary>Deeper than any chain of pre-dumps anyone runs (CRIU users report ~720).</summary>
    public const int MaxChainDepth = 4096;

    private readonly HashSet<string> _chain;
    private ImageSet? _parent;
    private bool _parentResolved;

    private ImageSet(string path, string canonical, HashSet<string> chain, int depth)
    {
        Path = path;
        CanonicalPath = canonical;
        _chain = chain;
        Depth = depth;
    }

    public string Path { get; }
    public string CanonicalPath { get; }
    /// <summary>0 for the directory opened, 1 for its parent, ...</summary>
    public int Depth { get; }

    public static ImageSet Open(string path)
    {
        var canonical = Canonical(path, path, "image directory");
        CheckComplete(path);
        Manifest.Verify(path);
        return new ImageSet(path, canonical, [canonical], 0);
    }

    private static string Canonical(string path, string errorFile, string kind)
    {
        var real = Interop.Libc.RealPath(path, out int errno);
        if (real is null)
        {
            string problem = errno switch
            {
                Interop.Libc.ELOOP => "symbolic link loop",
                Interop.Libc.ENOENT => "does not exist",
                _ => $"cannot be resolved (errno {errno})",
            };
            throw new ImageFormatException(errorFile, kind, null, problem);
        }
        if (!Directory.Exists(real))
            throw new ImageFormatException(errorFile, kind, null, "is not a directory");
        return real;
    }

    private static void CheckComplete(string path)
    {
        if (File.Exists(System.IO.Path.Combine(path, ImageNames.IncompleteMarker)))
            throw new ImageFormatException(path, "image directory", null,
                $"incomplete: it was being written and never committed ({ImageNames.IncompleteMarker} is present); the dump that made it did not finish");
        // A dump killed between creating the directory and its marker leaves it empty (or, from
        // versions that wrote the marker by rename, with only the marker's temporary).
        if (File.Exists(AtomicFile.TempNameFor(System.IO.Path.Combine(path, ImageNames.IncompleteMarker)))
            || !Directory.EnumerateFileSystemEntries(path).Any())
            throw new ImageFormatException(path, "image directory", null,
                "incomplete: the directory is empty or holds only a half-made marker; the dump that made it did not finish");
    }

    public string PathOf(string fileName) => System.IO.Path.Combine(Path, fileName);
    public bool Has(string fileName) => File.Exists(PathOf(fileName));

    /// <summary>The parent image set, or null when there is no <c>parent</c> link.</summary>
    public ImageSet? Parent
    {
        get
        {
            if (!_parentResolved)
            {
                _parent = ResolveParent();
                _parentResolved = true;
            }
            return _parent;
        }
    }

    /// <summary>This set, its parent, its grandparent, ... to the root of the chain.</summary>
    public IReadOnlyList<ImageSet> Chain()
    {
        var list = new List<ImageSet>();
        for (var s = this; s is not null; s = s.Parent)
            list.Add(s);
        return list;
    }

    private ImageSet? ResolveParent()
    {
        var link = PathOf(ImageNames.ParentLink);
        var info = new FileInfo(link);
        string? target = info.LinkTarget;
        if (target is null && !Directory.Exists(link))
            return null;
        if (Depth + 1 >= MaxChainDepth)
            throw new ImageFormatException(link, "parent link", null, $"parent chain is deeper than {MaxChainDepth}");
        string canonical;
        var real = Interop.Libc.RealPath(link, out int errno);
        if (real is null)
        {
            string problem = errno == Interop.Libc.ELOOP
                ? $"parent link loops (symbolic link loop through '{target}')"
                : $"dangling parent link: '{target}' does not exist";
            throw new ImageFormatException(link, "parent link", null, problem);
        }
        canonical = real;
        if (!Directory.Exists(canonical))
            throw new ImageFormatException(link, "parent link", null, $"parent link points to '{target}', which is not a directory");
        if (_chain.Contains(canonical))
            throw new ImageFormatException(link, "parent link", null, $"parent link loops: '{target}' leads back to {canonical}, already in the chain");
        var parentPath = target is not null && !System.IO.Path.IsPathRooted(target)
            ? System.IO.Path.GetFullPath(System.IO.Path.Combine(Path, target))
            : canonical;
        CheckComplete(parentPath);
        Manifest.Verify(parentPath);
        return new ImageSet(parentPath, canonical, [.. _chain, canonical], Depth + 1);
    }

    public inventory_entry ReadInventory() => ImageFile.ReadSingle<inventory_entry>(PathOf(ImageNames.Inventory), ImageKind.Inventory);

    public IReadOnlyList<pstree_entry> ReadPstree() =>
        ImageFile.Read(PathOf(ImageNames.Pstree), ImageKind.Pstree).Entries.Cast<pstree_entry>().ToList();

    public core_entry ReadCore(int tid) => ImageFile.ReadSingle<core_entry>(PathOf(ImageNames.Core(tid)), ImageKind.Core);
    public task_kobj_ids_entry ReadIds(int pid) => ImageFile.ReadSingle<task_kobj_ids_entry>(PathOf(ImageNames.Ids(pid)), ImageKind.Ids);
    public mm_entry ReadMm(int pid) => ImageFile.ReadSingle<mm_entry>(PathOf(ImageNames.Mm(pid)), ImageKind.Mm);

    public IReadOnlyList<file_entry> ReadFiles() =>
        ImageFile.Read(PathOf(ImageNames.Files), ImageKind.Files).Entries.Cast<file_entry>().ToList();

    /// <summary>remap-fpath.img's entries; none when the set has no such image.</summary>
    public IReadOnlyList<remap_file_path_entry> ReadRemapFpath() =>
        Has(ImageNames.RemapFpath)
            ? ImageFile.Read(PathOf(ImageNames.RemapFpath), ImageKind.RemapFpath).Entries.Cast<remap_file_path_entry>().ToList()
            : [];

    public (ghost_file_entry Entry, byte[] Contents) ReadGhostFile(uint ghostId) => GhostFile.Read(PathOf(ImageNames.GhostFile(ghostId)));

    /// <summary>The content tracker's digests of the task's pages, or null when this set has none.</summary>
    public PageDigestMap? ReadPageDigests(int pid) =>
        Has(ImageNames.PageDigests(pid))
            ? PageDigestMap.FromEntries(ImageFile.Read(PathOf(ImageNames.PageDigests(pid)), ImageKind.PageDigests).Entries.Cast<page_digests_entry>(), PathOf(ImageNames.PageDigests(pid)))
            : null;

    public IReadOnlyList<sim_state_entry> ReadSimState(int pid) =>
        ImageFile.Read(PathOf(ImageNames.SimState(pid)), ImageKind.SimState).Entries.Cast<sim_state_entry>().ToList();

    public dump_stats_entry? ReadDumpStats() => StatsFile.ReadDump(Path);
    public restore_stats_entry? ReadRestoreStats() => StatsFile.ReadRestore(Path);

    public bool HasPagemap(int pid) => Has(ImageNames.Pagemap(pid));
    public PagemapImage ReadPagemap(int pid) => PagemapImage.Load(PathOf(ImageNames.Pagemap(pid)));

    /// <summary>Pids that have a pagemap-PID.img here (not pagemap-shmem-*).</summary>
    public IReadOnlyList<int> PagemapPids()
    {
        var pids = new List<int>();
        foreach (var f in Directory.EnumerateFiles(Path, "pagemap-*.img"))
        {
            var name = System.IO.Path.GetFileNameWithoutExtension(f).AsSpan("pagemap-".Length);
            if (int.TryParse(name, NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
                pids.Add(pid);
        }
        pids.Sort();
        return pids;
    }

    /// <summary>A reader of pid's pages that follows PE_PARENT holes down the chain.</summary>
    public PageReader OpenPageReader(int pid) => OpenPageReader(ImageNames.Pagemap(pid));

    public PageReader OpenShmemPageReader(ulong shmid) => OpenPageReader(ImageNames.ShmemPagemap(shmid));

    private PageReader OpenPageReader(string pagemapName)
    {
        var map = PagemapImage.Load(PathOf(pagemapName));
        var pages = map.PagesLength > 0 || Has(map.PagesFileName) ? PagesSource.OpenFile(PathOf(map.PagesFileName)) : null;
        PagesSource? deltas = null;
        try
        {
            if (map.DeltasLength > 0)
            {
                if (!Has(map.DeltasFileName))
                    throw new ImageFormatException(PathOf(map.DeltasFileName), "deltas", 0, $"file is missing but {map.Path} has PE_DELTA pages");
                deltas = PagesSource.OpenFile(PathOf(map.DeltasFileName));
            }
            return new PageReader(map, pages, () =>
            {
                var parent = Parent;
                return parent is not null && parent.Has(pagemapName) ? parent.OpenPageReader(pagemapName) : null;
            }, deltas);
        }
        catch
        {
            deltas?.Dispose();
            pages?.Dispose();
            throw;
        }
    }
}

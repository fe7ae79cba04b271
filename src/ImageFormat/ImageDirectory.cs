using CriuSharp.ImageFormat.Images;
using Google.Protobuf;

namespace CriuSharp.ImageFormat;

/// <summary>
/// Writes one images directory the way CRIU lays it out (image-desc.c names, a relative
/// <c>parent</c> symlink to the previous dump). Every file is written atomically, and the
/// directory carries an "incomplete" marker from creation until <see cref="Commit"/>, so an
/// interrupted dump is recognisable and <see cref="ImageSet.Open"/> refuses it.
/// </summary>
public sealed class ImageDirectory : IDisposable
{
    private readonly List<PagemapWriter> _openPagemaps = [];
    private uint _nextPagesId = 1;

    private ImageDirectory(string path)
    {
        Path = path;
    }

    public string Path { get; }
    public bool Committed { get; private set; }

    /// <summary>Totals of every pagemap finished through this directory.</summary>
    public PageWriteStats PageStats { get; } = new();

    /// <summary>
    /// Creates (or reuses an empty or incomplete) directory and marks it incomplete. A directory
    /// that already holds a committed image set is refused rather than mixed with new files.
    /// </summary>
    public static ImageDirectory Create(string path)
    {
        Directory.CreateDirectory(path);
        var marker = System.IO.Path.Combine(path, ImageNames.IncompleteMarker);
        // A log (-o dump.log, CRIU's convention) may already be open there.
        if (!File.Exists(marker) && Directory.EnumerateFileSystemEntries(path).Any(e => !e.EndsWith(".log", StringComparison.Ordinal)))
            throw new IOException($"{path} already holds files; images are written into an empty directory");
        // Not via AtomicFile: the marker's existence is what counts, and creating it in place leaves
        // no window in which a kill could leave a renamed-never temporary and no marker.
        File.WriteAllBytes(marker, "criu-sharp: this image directory is being written or was interrupted\n"u8.ToArray());
        CrashPoints.Hit("marker");
        return new ImageDirectory(path);
    }

    public string PathOf(string fileName) => System.IO.Path.Combine(Path, fileName);

    /// <summary>
    /// Creates the <c>parent</c> symlink. CRIU takes --prev-images-dir relative to the images
    /// directory and warns that an absolute link breaks when the chain moves; an absolute
    /// <paramref name="parentDir"/> is therefore turned into a relative one.
    /// </summary>
    public void LinkParent(string parentDir)
    {
        string target = System.IO.Path.IsPathRooted(parentDir)
            ? System.IO.Path.GetRelativePath(System.IO.Path.GetFullPath(Path), System.IO.Path.GetFullPath(parentDir))
            : parentDir;
        var resolved = System.IO.Path.GetFullPath(System.IO.Path.Combine(Path, target));
        if (!Directory.Exists(resolved))
            throw new ImageFormatException(PathOf(ImageNames.ParentLink), "parent link", null, $"target '{target}' does not exist");
        var link = PathOf(ImageNames.ParentLink);
        if (File.Exists(link) || Directory.Exists(link) || new FileInfo(link).LinkTarget is not null)
            File.Delete(link);
        File.CreateSymbolicLink(link, target);
    }

    public void WriteImage(string fileName, ImageKind kind, IEnumerable<IMessage> entries)
    {
        EnsureOpen();
        ImageFile.WriteAtomic(PathOf(fileName), kind, entries);
    }

    /// <summary>inventory.img (no head magic). A dump sets img_version = 2; a pre-dump leaves it 0 as CRIU does.</summary>
    public void WriteInventory(inventory_entry inventory) => WriteImage(ImageNames.Inventory, ImageKind.Inventory, [inventory]);
    public void WritePstree(IEnumerable<pstree_entry> processes) => WriteImage(ImageNames.Pstree, ImageKind.Pstree, processes);
    public void WriteCore(int tid, core_entry core) => WriteImage(ImageNames.Core(tid), ImageKind.Core, [core]);
    public void WriteIds(int pid, task_kobj_ids_entry ids) => WriteImage(ImageNames.Ids(pid), ImageKind.Ids, [ids]);
    public void WriteMm(int pid, mm_entry mm) => WriteImage(ImageNames.Mm(pid), ImageKind.Mm, [mm]);
    public void WriteFiles(IEnumerable<file_entry> files) => WriteImage(ImageNames.Files, ImageKind.Files, files);
    public void WriteRemapFpath(IEnumerable<remap_file_path_entry> remaps) => WriteImage(ImageNames.RemapFpath, ImageKind.RemapFpath, remaps);

    public void WriteGhostFile(uint ghostId, ghost_file_entry entry, ReadOnlyMemory<byte> contents)
    {
        EnsureOpen();
        ImageFormat.GhostFile.WriteAtomic(PathOf(ImageNames.GhostFile(ghostId)), entry, contents);
    }
    /// <summary>Our own sidecar (magic SIM_STATE) for simulator state no CRIU message carries.</summary>
    public void WriteSimState(int pid, IEnumerable<sim_state_entry> entries) => WriteImage(ImageNames.SimState(pid), ImageKind.SimState, entries);
    public void WritePageDigests(int pid, PageDigestMap digests) => WriteImage(ImageNames.PageDigests(pid), ImageKind.PageDigests, digests.ToEntries());
    public void WriteDumpStats(dump_stats_entry stats) => StatsFile.WriteDump(Path, stats);
    public void WriteRestoreStats(restore_stats_entry stats) => StatsFile.WriteRestore(Path, stats);

    /// <summary>The next pages_id, from a counter that starts at 1 per dump as in CRIU.</summary>
    public uint NextPagesId() => _nextPagesId++;

    /// <summary>Starts pagemap-PID.img and its pages-N.img with the next pages_id.</summary>
    public PagemapWriter BeginPagemap(int pid, PageStoreOptions options) => BeginPagemap(pid, NextPagesId(), options);

    public PagemapWriter BeginPagemap(int pid, uint pagesId, PageStoreOptions options) =>
        Begin(ImageNames.Pagemap(pid), pagesId, options);

    public PagemapWriter BeginShmemPagemap(ulong shmid, uint pagesId, PageStoreOptions options) =>
        Begin(ImageNames.ShmemPagemap(shmid), pagesId, options);

    private PagemapWriter Begin(string pagemapName, uint pagesId, PageStoreOptions options)
    {
        EnsureOpen();
        if (pagesId >= _nextPagesId)
            _nextPagesId = pagesId + 1;
        var pagesPath = PathOf(ImageNames.Pages(pagesId));
        var pagesTemp = AtomicFile.TempNameFor(pagesPath);
        var fs = new FileStream(pagesTemp, FileMode.Create, FileAccess.Write, FileShare.None, 0);
        PagemapWriter? writer = null;
        try
        {
            writer = new PagemapWriter(CrashPoints.Watch(fs, "pages.block"), pagesId, options, leaveOpen: false,
                onFinish: w =>
                {
                    fs.Flush(flushToDisk: true);
                    CrashPoints.Hit("pages.tmp");
                    File.Move(pagesTemp, pagesPath, overwrite: true);
                    if (w.DeltaBytes.Length > 0)
                        AtomicFile.Write(PathOf(ImageNames.Deltas(pagesId)), w.DeltaBytes);
                    ImageFile.WriteAtomic(PathOf(pagemapName), ImageKind.Pagemap, w.PagemapMessages());
                    PageStats.Add(w.Stats);
                    _openPagemaps.Remove(w);
                },
                onAbort: w =>
                {
                    AtomicFile.TryDelete(pagesTemp);
                    _openPagemaps.Remove(w);
                });
        }
        catch
        {
            fs.Dispose();
            AtomicFile.TryDelete(pagesTemp);
            throw;
        }
        _openPagemaps.Add(writer);
        return writer;
    }

    /// <summary>Marks the directory complete: the last step of a successful dump.</summary>
    public void Commit()
    {
        EnsureOpen();
        if (_openPagemaps.Count > 0)
            throw new InvalidOperationException($"{_openPagemaps.Count} pagemap(s) were begun but not finished");
        // The manifest is the last file; removing the marker is the commit point.
        Manifest.Write(Path);
        File.Delete(PathOf(ImageNames.IncompleteMarker));
        CrashPoints.Hit("committed");
        Committed = true;
    }

    private void EnsureOpen()
    {
        if (Committed)
            throw new InvalidOperationException($"{Path} is already committed");
    }

    /// <summary>Leaves an uncommitted directory marked incomplete.</summary>
    public void Dispose()
    {
        foreach (var w in _openPagemaps.ToArray())
            w.Dispose();
    }
}

/// <summary>stats-dump / stats-restore: SERVICE head, STATS magic, one stats_entry (criu/stats.c).</summary>
public static class StatsFile
{
    public static void WriteDump(string workDir, dump_stats_entry dump) =>
        ImageFile.WriteAtomic(Path.Combine(workDir, ImageNames.StatsDump), ImageKind.Stats, new stats_entry { Dump = dump });

    public static void WriteRestore(string workDir, restore_stats_entry restore) =>
        ImageFile.WriteAtomic(Path.Combine(workDir, ImageNames.StatsRestore), ImageKind.Stats, new stats_entry { Restore = restore });

    public static stats_entry Read(string path) => ImageFile.ReadSingle<stats_entry>(path, ImageKind.Stats);

    public static dump_stats_entry? ReadDump(string workDir)
    {
        var path = Path.Combine(workDir, ImageNames.StatsDump);
        return File.Exists(path) ? Read(path).Dump : null;
    }

    public static restore_stats_entry? ReadRestore(string workDir)
    {
        var path = Path.Combine(workDir, ImageNames.StatsRestore);
        return File.Exists(path) ? Read(path).Restore : null;
    }
}

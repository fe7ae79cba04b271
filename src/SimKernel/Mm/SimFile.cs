namespace CriuSharp.SimKernel.Mm;

/// <summary>
/// A file of the small simulated filesystem, or the shmem object behind shared anonymous memory.
/// Its page cache maps page index → PFN; file contents live only there (the "disk" is the cache).
/// </summary>
public sealed partial class SimFile
{
    internal SimFile(string path, ulong inode, bool isShmem)
    {
        Path = path;
        Inode = inode;
        IsShmem = isShmem;
    }

    /// <summary>
    /// The name maps shows: the path the file was created under, or the last name link(2) gave it.
    /// (Linux shows the name each mapping was opened by; the two differ only for a file with
    /// several names, which restore's ghost files have for a moment.)
    /// </summary>
    public string Path { get; internal set; }
    public ulong Inode { get; }
    /// <summary>Shared anonymous memory: shown in maps as "/dev/zero (deleted)", dumped by CRIU as shmem.</summary>
    public bool IsShmem { get; }
    public long Size { get; internal set; }
    /// <summary>Device numbers shown in maps (00:01 for shmem, 08:01 for the simulated disk, a hugetlbfs mount per page size).</summary>
    public (int Major, int Minor) Device => Hugetlb is { } h ? (0, h.DeviceMinor) : IsShmem ? (0, 1) : (8, 1);
    internal Dictionary<long, long> Pages { get; } = [];

    /// <summary>The pool of a hugetlbfs file (MAP_HUGETLB's internal file, memfd MFD_HUGETLB, SHM_HUGETLB, a file under a hugetlbfs mount); null otherwise.</summary>
    public HugetlbPool? Hugetlb { get; internal set; }
    public bool IsHugetlb => Hugetlb is not null;
    /// <summary>Unlinked (or never linked) while still open or mapped: maps shows the path with " (deleted)".</summary>
    public bool Unlinked { get; internal set; }
    /// <summary>Open file descriptions holding the file (a memfd until closed, a SysV segment until IPC_RMID).</summary>
    internal int OpenHandles { get; set; }
    /// <summary>Huge pages of a hugetlbfs file: huge-page index → head PFN.</summary>
    internal Dictionary<long, long> HugePages { get; } = [];
    /// <summary>Huge-page indexes reserved in the pool for this file by a shared mapping, not yet faulted.</summary>
    internal HashSet<long> HugeReserved { get; } = [];
}

/// <summary>The simulated filesystem: a flat namespace of regular files.</summary>
public sealed partial class SimFs
{
    private readonly Dictionary<string, SimFile> _files = new(StringComparer.Ordinal);
    private readonly PhysicalMemory _mem;
    private ulong _nextInode = 1000;

    internal SimFs(PhysicalMemory mem) => _mem = mem;

    public IEnumerable<SimFile> Files => _files.Values;

    public SimFile? Lookup(string path) => _files.GetValueOrDefault(path);

    /// <summary>Creates or replaces a file with the given contents, read into the page cache.</summary>
    public SimFile Create(string path, ReadOnlySpan<byte> contents)
    {
        if (_files.ContainsKey(path))
            throw new KernelException(Errno.EEXIST, $"create {path}");
        var f = new SimFile(path, _nextInode++, isShmem: false) { Size = contents.Length };
        int ps = _mem.PageSize;
        for (long idx = 0; idx * ps < contents.Length; idx++)
        {
            long pfn = _mem.AllocateZeroed(PhysicalMemory.FrameKind.PageCache);
            if (pfn < 0)
                throw new KernelException(Errno.ENOMEM, $"create {path}");
            var src = contents.Slice((int)(idx * ps), (int)Math.Min(ps, contents.Length - idx * ps));
            src.CopyTo(_mem.PageMut(pfn));
            f.Pages[idx] = pfn;
        }
        _files[path] = f;
        return f;
    }

    /// <summary>An inode on a hugetlbfs mount (not linked into the namespace).</summary>
    internal SimFile CreateHugetlbObject(string path, HugetlbPool pool) => new(path, _nextInode++, isShmem: false) { Hugetlb = pool };

    internal SimFile CreateShmem(long size) => new("/dev/zero", _nextInode++, isShmem: true) { Size = size };

    /// <summary>The page-cache frame for a page of the file, created (zeroed) on first use.</summary>
    internal long GetPage(SimFile f, long index)
    {
        if (f.Pages.TryGetValue(index, out long pfn))
            return pfn;
        pfn = _mem.AllocateZeroed(PhysicalMemory.FrameKind.PageCache);
        if (pfn < 0)
            return -1;
        f.Pages[index] = pfn;
        return pfn;
    }

    /// <summary>Reads file bytes straight from the page cache (holes read as zeros).</summary>
    public void Read(SimFile f, long offset, Span<byte> dst)
    {
        int ps = _mem.PageSize;
        while (dst.Length > 0)
        {
            long idx = offset / ps;
            int off = (int)(offset % ps);
            int n = Math.Min(ps - off, dst.Length);
            if (f.Pages.TryGetValue(idx, out long pfn))
                _mem.Page(pfn).Slice(off, n).CopyTo(dst);
            else
                dst[..n].Clear();
            dst = dst[n..];
            offset += n;
        }
    }
}

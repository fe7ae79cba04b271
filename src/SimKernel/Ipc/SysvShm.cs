using System.Globalization;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Ipc;

/// <summary>shmget/shmctl flag values (uapi/linux/ipc.h, uapi/linux/shm.h).</summary>
public static class ShmFlags
{
    public const int IpcPrivate = 0;
    public const int IpcCreat = 0x200;   // 01000
    public const int IpcExcl = 0x400;    // 02000
    public const int ShmHugetlb = 0x800; // 04000
    public const int ShmNoReserve = 0x1000; // 010000 (shmget)
    public const int ShmRdonly = 0x1000; // 010000 (shmat)
    public const int ShmRnd = 0x2000;    // 020000 (shmat)
    public const int IpcRmid = 0;
    /// <summary>SHMLBA on x86_64 and arm64: the page size; shmat with SHM_RND rounds down to it.</summary>
    public const ulong ShmLbaPages = 1;
}

/// <summary>One SysV shared memory segment: a shmem object, or a hugetlbfs file for SHM_HUGETLB.</summary>
public sealed class ShmSegment
{
    internal ShmSegment(int id, int key, ulong size, SimFile file)
    {
        Id = id;
        Key = key;
        Size = size;
        File = file;
    }

    public int Id { get; }
    public int Key { get; internal set; }
    public ulong Size { get; }
    public SimFile File { get; }
    /// <summary>IPC_RMID was given: the segment goes when the last attach goes.</summary>
    public bool Removed { get; internal set; }
}

/// <summary>
/// The SysV shared memory namespace (ipc/shm.c): shmget creates or finds a segment by key, shmat
/// maps its file MAP_SHARED, shmdt unmaps it, IPC_RMID removes the key and frees the segment once
/// nothing is attached. With SHM_HUGETLB the segment is a file of the hugetlb pool of the size in
/// bits 26-31, whose pages are reserved at shmget (hugetlb_file_setup) — ENOMEM when the pool
/// cannot promise them.
/// </summary>
public sealed partial class SysvShm
{
    private readonly Kernel _k;
    private readonly Dictionary<int, ShmSegment> _segs = [];
    private int _nextId;

    internal SysvShm(Kernel k) => _k = k;

    public IEnumerable<ShmSegment> Segments => _segs.Values;

    public ShmSegment? Find(int id) => _segs.GetValueOrDefault(id);

    public SysResult Shmget(int key, ulong size, int shmflg)
    {
        if (key != ShmFlags.IpcPrivate && _segs.Values.FirstOrDefault(s => s.Key == key && !s.Removed) is { } found)
        {
            if ((shmflg & ShmFlags.IpcCreat) != 0 && (shmflg & ShmFlags.IpcExcl) != 0)
                return Errno.EEXIST;
            if (size > found.Size)
                return Errno.EINVAL;
            return SysResult.Success(found.Id);
        }
        if (key != ShmFlags.IpcPrivate && (shmflg & ShmFlags.IpcCreat) == 0)
            return Errno.ENOENT;
        if (size == 0)
            return Errno.EINVAL;
        SimFile file;
        string name = "/SYSV" + key.ToString("x8", CultureInfo.InvariantCulture);
        if ((shmflg & ShmFlags.ShmHugetlb) != 0)
        {
            var pool = _k.Hugetlb.BySizeLog((shmflg >> HugetlbState.HugeShift) & HugetlbState.HugeMask);
            if (pool is null)
                return Errno.EINVAL;
            if (!pool.Allocatable)
                return Errno.ENOMEM;
            ulong hsz = pool.Size;
            ulong rounded = (size + hsz - 1) & ~(hsz - 1);
            long pages = (long)(rounded / hsz);
            if ((shmflg & ShmFlags.ShmNoReserve) == 0 && !pool.Reserve(pages))
                return Errno.ENOMEM;
            file = _k.Hugetlb.CreateFile(pool, name, (long)size);
            if ((shmflg & ShmFlags.ShmNoReserve) == 0)
                for (long i = 0; i < pages; i++)
                    file.HugeReserved.Add(i);
        }
        else
            file = _k.Fs.CreateShmem((long)size);
        file.OpenHandles = 1;
        var seg = new ShmSegment(_nextId++, key, size, file);
        _segs[seg.Id] = seg;
        return SysResult.Success(seg.Id);
    }

    /// <summary>shmctl(id, IPC_RMID): the key is released now, the memory when nothing is attached.</summary>
    public SysResult Shmctl(int id, int cmd)
    {
        if (cmd != ShmFlags.IpcRmid)
            return Errno.EINVAL;
        if (!_segs.TryGetValue(id, out var seg))
            return Errno.EINVAL;
        seg.Removed = true;
        seg.Key = ShmFlags.IpcPrivate;
        MaybeDestroy(seg);
        return SysResult.Success();
    }

    internal void MaybeDestroy(ShmSegment seg)
    {
        if (!seg.Removed || Attached(seg))
            return;
        _segs.Remove(seg.Id);
        seg.File.OpenHandles = 0;
        _k.MaybeEvictHugetlb(seg.File);
    }

    private bool Attached(ShmSegment seg)
    {
        foreach (var t in _k.Tasks)
            foreach (var v in t.Mm.Vmas)
                if (ReferenceEquals(v.File, seg.File))
                    return true;
        return false;
    }

    /// <summary>shmat: maps the whole segment MAP_SHARED at <paramref name="addr"/> (or anywhere).</summary>
    internal SysResult Shmat(SimTask task, int id, ulong addr, int shmflg)
    {
        if (!_segs.TryGetValue(id, out var seg))
            return Errno.EINVAL;
        var prot = Prot.Read | ((shmflg & ShmFlags.ShmRdonly) != 0 ? 0 : Prot.Write);
        var flags = MapFlags.Shared;
        if (addr != 0)
        {
            if ((shmflg & ShmFlags.ShmRnd) != 0)
                addr &= _k.Arch.PageMask;
            else if ((addr & ((ulong)_k.Arch.PageSize - 1)) != 0)
                return Errno.EINVAL;
            flags |= MapFlags.Fixed;
        }
        return task.Mmap(addr, seg.Size, prot, flags, seg.File);
    }

    /// <summary>shmdt: unmaps the attach that starts at <paramref name="addr"/>.</summary>
    internal SysResult Shmdt(SimTask task, ulong addr)
    {
        var v = task.Mm.Find(addr);
        if (v is null || v.Start != addr || _segs.Values.FirstOrDefault(s => ReferenceEquals(s.File, v.File)) is not { } seg)
            return Errno.EINVAL;
        var r = task.Munmap(v.Start, v.Length);
        if (!r.Ok)
            return r;
        MaybeDestroy(seg);
        return SysResult.Success();
    }
}

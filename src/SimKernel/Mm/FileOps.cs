namespace CriuSharp.SimKernel.Mm;

/// <summary>open(2) flags (asm-generic/fcntl.h).</summary>
[Flags]
public enum OpenFlags
{
    ReadOnly = 0,
    WriteOnly = 1,
    ReadWrite = 2,
    Create = 0x40,
    Excl = 0x80,
    Truncate = 0x200,
    Append = 0x400,
}

/// <summary>msync(2) flags (asm-generic/mman-common.h).</summary>
[Flags]
public enum MsyncFlags
{
    Async = 1,
    Invalidate = 2,
    Sync = 4,
}

/// <summary>An open file description: the file, the position and the access mode.</summary>
public sealed class FileDescription
{
    internal FileDescription(SimFile file, OpenFlags flags)
    {
        File = file;
        Flags = flags;
    }

    public SimFile File { get; }
    public OpenFlags Flags { get; }
    public long Position { get; internal set; }
    public bool CanRead => (Flags & (OpenFlags.WriteOnly | OpenFlags.ReadWrite)) != OpenFlags.WriteOnly;
    public bool CanWrite => (Flags & (OpenFlags.WriteOnly | OpenFlags.ReadWrite)) != 0;
}

/// <summary>
/// The file system calls on the simulated filesystem. File contents live in the page cache; a
/// page is dirty when write(2) stored into it or when a shared mapping's entry for it is dirty
/// (folio dirty or pte dirty, as the kernel keeps them). fsync and msync(MS_SYNC) write the dirty
/// pages back: the cache copy is clean again and every shared mapping of it is write-protected and
/// cleaned (page_mkclean), so the next store through a mapping faults and re-dirties the page.
///
///   write()/pwrite() ──► page cache page ──► DirtyPages
///   store via MAP_SHARED ──► pte dirty ─┐
///   fsync / msync(MS_SYNC) ◄────────────┴── writeback: clean, write-protect the ptes
/// </summary>
public sealed partial class SimFs
{
    internal Kernel? Kernel { get; set; }

    public SysResult Open(string path, OpenFlags flags, out FileDescription? file)
    {
        file = null;
        var f = Lookup(path);
        if (f is null)
        {
            if ((flags & OpenFlags.Create) == 0)
                return Errno.ENOENT;
            f = Create(path, []);
        }
        else if ((flags & (OpenFlags.Create | OpenFlags.Excl)) == (OpenFlags.Create | OpenFlags.Excl))
            return Errno.EEXIST;
        file = new FileDescription(f, flags);
        if ((flags & OpenFlags.Truncate) != 0 && file.CanWrite)
            Truncate(f, 0);
        return SysResult.Success();
    }

    /// <summary>read(2): up to the end of the file, advancing the position.</summary>
    public SysResult Read(FileDescription of, Span<byte> buf)
    {
        var r = Pread(of, buf, of.Position);
        if (r.Ok)
            of.Position += r.Value;
        return r;
    }

    public SysResult Pread(FileDescription of, Span<byte> buf, long offset)
    {
        if (!of.CanRead)
            return Errno.EBADF;
        if (offset < 0)
            return Errno.EINVAL;
        long n = Math.Max(0, Math.Min(buf.Length, of.File.Size - offset));
        if (n > 0)
            Read(of.File, offset, buf[..(int)n]);
        return SysResult.Success(n);
    }

    /// <summary>write(2) at the position (at the end with O_APPEND).</summary>
    public SysResult Write(FileDescription of, ReadOnlySpan<byte> data)
    {
        if ((of.Flags & OpenFlags.Append) != 0)
            of.Position = of.File.Size;
        var r = Pwrite(of, data, of.Position);
        if (r.Ok)
            of.Position += r.Value;
        return r;
    }

    /// <summary>pwrite(2): into the page cache, marking the pages dirty; the file grows to cover the write.</summary>
    public SysResult Pwrite(FileDescription of, ReadOnlySpan<byte> data, long offset)
    {
        if (!of.CanWrite)
            return Errno.EBADF;
        if (offset < 0)
            return Errno.EINVAL;
        var f = of.File;
        int ps = _mem.PageSize;
        long at = offset;
        int done = 0;
        while (done < data.Length)
        {
            long idx = at / ps;
            int off = (int)(at % ps);
            int n = Math.Min(ps - off, data.Length - done);
            long pfn = GetPage(f, idx);
            if (pfn < 0)
                return done > 0 ? SysResult.Success(done) : Errno.ENOSPC;
            data.Slice(done, n).CopyTo(_mem.PageMut(pfn).Slice(off, n));
            f.DirtyPages.Add(idx);
            done += n;
            at += n;
        }
        if (at > f.Size)
            f.Size = at;
        return SysResult.Success(done);
    }

    /// <summary>ftruncate(2). Shrinking drops the page cache past the end and unmaps it from every mapping (truncate_pagecache).</summary>
    public SysResult Ftruncate(FileDescription of, long length)
    {
        if (!of.CanWrite)
            return Errno.EINVAL;
        if (length < 0)
            return Errno.EINVAL;
        if (of.File.IsHugetlb)
            return Errno.EINVAL; // hugetlbfs truncation is not modelled
        Truncate(of.File, length);
        return SysResult.Success();
    }

    private void Truncate(SimFile f, long length)
    {
        int ps = _mem.PageSize;
        long keep = (length + ps - 1) / ps;
        if (length < f.Size)
        {
            Kernel?.UnmapFileRange(f, keep);
            foreach (var idx in f.Pages.Keys.Where(i => i >= keep).ToList())
            {
                long pfn = f.Pages[idx];
                f.Pages.Remove(idx);
                f.DirtyPages.Remove(idx);
                if (_mem.MapCount(pfn) == 0)
                    _mem.Free(pfn);
                else
                    _mem.SetKind(pfn, PhysicalMemory.FrameKind.Anon); // still held by a mapping: freed with it
            }
            // The tail of the last page past the new end reads as zeros.
            if (length % ps != 0 && f.Pages.TryGetValue(length / ps, out long last))
                _mem.PageMut(last)[(int)(length % ps)..].Clear();
        }
        f.Size = length;
    }

    /// <summary>
    /// unlink(2): the name goes; open descriptions and mappings keep the file, which is "(deleted)"
    /// in maps once its last name is gone.
    /// </summary>
    public SysResult Unlink(string path)
    {
        if (!_files.Remove(path, out var f))
            return Errno.ENOENT;
        if (Links(f) == 0)
            f.Unlinked = true;
        return SysResult.Success();
    }

    /// <summary>link(2): <paramref name="newPath"/> becomes another name of the file at <paramref name="oldPath"/>.</summary>
    public SysResult Link(string oldPath, string newPath)
    {
        if (Lookup(oldPath) is not { } f)
            return Errno.ENOENT;
        if (_files.ContainsKey(newPath))
            return Errno.EEXIST;
        _files[newPath] = f;
        f.Path = newPath;
        return SysResult.Success();
    }

    /// <summary>st_nlink: how many names the file has.</summary>
    public int Links(SimFile f) => _files.Values.Count(x => ReferenceEquals(x, f));

    /// <summary>fsync(2): writes back every dirty page of the file.</summary>
    public SysResult Fsync(FileDescription of)
    {
        Kernel?.Writeback(of.File);
        return SysResult.Success();
    }

    /// <summary>Page indexes of <paramref name="f"/> that are dirty now (written, or dirty in a shared mapping).</summary>
    public IReadOnlyCollection<long> DirtyPages(SimFile f)
    {
        var set = new SortedSet<long>(f.DirtyPages);
        Kernel?.ForEachSharedPte(f, (idx, t, i) =>
        {
            if ((t.E[i] & Kernel.Arch.Dirty) != 0)
                set.Add(idx);
        });
        return set;
    }
}

public sealed partial class SimFile
{
    /// <summary>Pages stored into by write(2) and not yet written back.</summary>
    internal HashSet<long> DirtyPages { get; } = [];
    /// <summary>Pages written back so far (fsync, msync MS_SYNC).</summary>
    public long PagesWrittenBack { get; internal set; }
}

public sealed partial class MmStruct
{
    /// <summary>
    /// msync(2): MS_SYNC writes back the files of the shared mappings in the range (vfs_fsync_range);
    /// MS_ASYNC does nothing since dirty pages are tracked anyway (mm/msync.c). EINVAL for an
    /// unaligned address or bad flags, ENOMEM when part of the range is unmapped.
    /// </summary>
    public SysResult Msync(ulong addr, ulong len, MsyncFlags flags)
    {
        if (Dead)
            return Errno.ESRCH;
        if (((int)flags & ~7) != 0 || !Aligned(addr))
            return Errno.EINVAL;
        if ((flags & MsyncFlags.Async) != 0 && (flags & MsyncFlags.Sync) != 0)
            return Errno.EINVAL;
        ulong end = addr + PageAlign(len);
        if (end < addr)
            return Errno.ENOMEM;
        if (end == addr)
            return SysResult.Success();
        bool unmapped = !RangeFullyMapped(addr, end);
        if ((flags & MsyncFlags.Sync) != 0)
        {
            var files = new HashSet<SimFile>(ReferenceEqualityComparer.Instance);
            for (int i = FirstEndingAbove(addr); i < _vmas.Count && _vmas[i].Start < end; i++)
                if (_vmas[i] is { IsShared: true, File: { IsShmem: false, IsHugetlb: false } f })
                    files.Add(f);
            foreach (var f in files)
                _k.Writeback(f);
        }
        return unmapped ? Errno.ENOMEM : SysResult.Success();
    }
}

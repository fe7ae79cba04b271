using CriuSharp.SimKernel.Mm;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// File system calls on the simulated filesystem, against man 2 open/read/write/pwrite/ftruncate/
/// unlink/fsync/msync and mm/filemap.c (SIGBUS past the end of file), mm/page-writeback.c
/// (page_mkclean write-protects shared mappings at writeback).
/// </summary>
public class FileCallTests
{
    [Fact]
    public void WriteReadPwrite_MoveThePosition_AndGrowTheFile()
    {
        var s = new Sim();
        var fs = s.K.Fs;
        fs.Open("/tmp/f", OpenFlags.ReadWrite | OpenFlags.Create, out var f).OrThrow("open");
        Assert.Equal(5, fs.Write(f!, "hello"u8).Value);
        Assert.Equal(3, fs.Pwrite(f!, "XYZ"u8, 8192).Value);
        Assert.Equal(8195, f!.File.Size);
        f.Position = 0;
        var buf = new byte[10];
        Assert.Equal(10, fs.Read(f, buf).Value);
        Assert.Equal("hello\0\0\0\0\0"u8.ToArray(), buf);
        Assert.Equal(3, fs.Pread(f, buf, 8192).Value);
        Assert.Equal(0, fs.Pread(f, buf, 9000).Value);
        Assert.Equal(Errno.EEXIST, fs.Open("/tmp/f", OpenFlags.Create | OpenFlags.Excl | OpenFlags.WriteOnly, out _).Error);
        fs.Open("/tmp/f", OpenFlags.ReadOnly, out var ro).OrThrow("open");
        Assert.Equal(Errno.EBADF, fs.Write(ro!, "x"u8).Error);
    }

    [Fact]
    public void SharedMappingStores_AreTheFile_DirtyUntilMsync_ThenWriteProtected()
    {
        var s = new Sim();
        var fs = s.K.Fs;
        fs.Open("/tmp/m", OpenFlags.ReadWrite | OpenFlags.Create, out var f).OrThrow("open");
        fs.Ftruncate(f!, 2 * (long)s.PS).OrThrow("ftruncate");
        ulong m = (ulong)s.T.Mmap(0, 2 * s.PS, Prot.Read | Prot.Write, MapFlags.Shared, f!.File).OrThrow("mmap");
        s.W(m + 4, 0x42);
        var b = new byte[1];
        fs.Pread(f, b, 4).OrThrow("pread");
        Assert.Equal(0x42, b[0]); // one page cache: the store is the file's content
        Assert.Equal([0L], fs.DirtyPages(f.File));
        s.T.Mm.Msync(m, 2 * s.PS, MsyncFlags.Sync).OrThrow("msync");
        Assert.Empty(fs.DirtyPages(f.File));
        Assert.Equal(1, f.File.PagesWrittenBack);
        long wp = s.T.Mm.WpFaults;
        s.W(m + 8, 1); // page_mkclean write-protected the pte: the next store faults and re-dirties
        Assert.Equal(wp + 1, s.T.Mm.WpFaults);
        Assert.Equal([0L], fs.DirtyPages(f.File));
        fs.Pwrite(f, "z"u8, (long)s.PS).OrThrow("pwrite");
        Assert.Equal([0L, 1L], fs.DirtyPages(f.File));
        fs.Fsync(f).OrThrow("fsync");
        Assert.Empty(fs.DirtyPages(f.File));
    }

    [Fact]
    public void Msync_Arguments()
    {
        var s = new Sim();
        ulong m = s.Anon(2);
        Assert.Equal(Errno.EINVAL, s.T.Mm.Msync(m + 1, s.PS, MsyncFlags.Sync).Error);
        Assert.Equal(Errno.EINVAL, s.T.Mm.Msync(m, s.PS, MsyncFlags.Sync | MsyncFlags.Async).Error);
        Assert.Equal(Errno.ENOMEM, s.T.Mm.Msync(m, 4 * s.PS, MsyncFlags.Async).Error);
        Assert.True(s.T.Mm.Msync(m, 2 * s.PS, MsyncFlags.Async).Ok);
    }

    [Fact]
    public void Ftruncate_UnmapsThePagesPastTheEnd_AndAccessThereIsSigbus()
    {
        var s = new Sim();
        var fs = s.K.Fs;
        fs.Open("/tmp/t", OpenFlags.ReadWrite | OpenFlags.Create, out var f).OrThrow("open");
        fs.Ftruncate(f!, 3 * (long)s.PS).OrThrow("ftruncate");
        ulong m = (ulong)s.T.Mmap(0, 3 * s.PS, Prot.Read | Prot.Write, MapFlags.Shared, f!.File).OrThrow("mmap");
        s.W(m + 2 * s.PS, 9);
        fs.Ftruncate(f, (long)s.PS + 10).OrThrow("shrink");
        Assert.Equal(0, s.R(m + s.PS + 100)); // the tail of the last page reads zero
        Assert.False(s.T.Write(m + 2 * s.PS, [1]).Ok);
        Assert.Equal(SimTask.SIGBUS, s.T.TermSignal);
    }

    [Fact]
    public void UnlinkedWhileMapped_StaysMapped_ShownDeleted()
    {
        var s = new Sim();
        var fs = s.K.Fs;
        fs.Open("/tmp/u", OpenFlags.ReadWrite | OpenFlags.Create, out var f).OrThrow("open");
        fs.Write(f!, new byte[s.PS]).OrThrow("write");
        ulong m = (ulong)s.T.Mmap(0, s.PS, Prot.Read | Prot.Write, MapFlags.Shared, f!.File).OrThrow("mmap");
        fs.Unlink("/tmp/u").OrThrow("unlink");
        Assert.Null(fs.Lookup("/tmp/u"));
        s.W(m, 3);
        Assert.Equal(3, s.R(m));
        Assert.Contains("/tmp/u (deleted)", s.K.Proc.Maps(s.T.Pid));
        Assert.Equal(Errno.ENOENT, fs.Unlink("/tmp/u").Error);
    }
}

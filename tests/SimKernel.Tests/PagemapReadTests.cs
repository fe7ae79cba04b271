using System.Buffers.Binary;
using CriuSharp.SimKernel.Proc;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>The read rules of /proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst, pagemap_read() in fs/proc/task_mmu.c).</summary>
public class PagemapReadTests
{
    private static ProcFile Open(Sim s, string name = "pagemap")
    {
        s.K.Proc.Open(s.T.Pid, name, OpenMode.ReadOnly, out var f).OrThrow("open");
        return f!;
    }

    [Fact]
    public void PositionAndCount_MustBeMultiplesOf8()
    {
        var s = new Sim();
        var f = Open(s);
        Assert.Equal(Errno.EINVAL, f.Read(new byte[7]).Error);
        f.Lseek(4, Whence.Set).OrThrow("lseek");
        Assert.Equal(Errno.EINVAL, f.Read(new byte[8]).Error);
        f.Lseek(8, Whence.Set).OrThrow("lseek");
        Assert.Equal(0, f.Read([]).Value);
    }

    [Fact]
    public void Lseek_SeekEndIsEinval_SeekCurAdds()
    {
        var f = Open(new Sim());
        Assert.Equal(Errno.EINVAL, f.Lseek(0, Whence.End).Error);
        f.Lseek(16, Whence.Set).OrThrow("set");
        Assert.Equal(24, f.Lseek(8, Whence.Cur).Value);
    }

    [Fact]
    public void Read_AdvancesPosition_AndEntriesMatchTheTypedHelper()
    {
        var s = new Sim();
        ulong m = s.Anon(4);
        s.W(m + s.PS);
        var f = Open(s);
        f.Lseek((long)(m / s.PS * 8), Whence.Set).OrThrow("lseek");
        var buf = new byte[32];
        Assert.Equal(32, f.Read(buf).Value);
        Assert.Equal((long)(m / s.PS * 8 + 32), f.Position);
        var typed = s.K.Proc.ReadPagemap(s.T.Pid, m, 4);
        for (int i = 0; i < 4; i++)
            Assert.Equal(typed[i], BinaryPrimitives.ReadUInt64LittleEndian(buf.AsSpan(i * 8)));
    }

    [Fact]
    public void ReadAtTaskSize_IsEof_AndStraddlingIsShort()
    {
        var s = new Sim();
        var f = Open(s);
        long end = (long)(s.K.Arch.TaskSize / s.PS * 8);
        f.Lseek(end, Whence.Set).OrThrow("lseek");
        Assert.Equal(0, f.Read(new byte[8]).Value);
        f.Lseek(end - 8, Whence.Set).OrThrow("lseek");
        Assert.Equal(8, f.Read(new byte[64]).Value);
    }

    [Fact]
    public void OverflowingPosition_IsEinval()
    {
        var f = Open(new Sim());
        f.Lseek(long.MaxValue - 7, Whence.Set).OrThrow("lseek");
        Assert.Equal(Errno.EINVAL, f.Read(new byte[16]).Error);
    }

    [Fact]
    public void LargeReadAcrossUnmappedSpace_ReturnsZeros()
    {
        var f = Open(new Sim());
        f.Lseek(0x10000000 / 4096 * 8, Whence.Set).OrThrow("lseek");
        var buf = new byte[8 << 20];
        Assert.Equal(buf.Length, f.Read(buf).Value);
        Assert.All(buf, b => Assert.Equal(0, b));
    }

    [Fact]
    public void FileIsBoundToTheMmAtOpen_ReadsZeroBytesAfterExit()
    {
        var s = new Sim();
        var f = Open(s);
        s.K.Exit(s.T, 0);
        Assert.Equal(0, f.Read(new byte[8]).Value);
    }

    [Fact]
    public void UnprivilegedOpener_SeesFlagsButNoPfn()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.W(m);
        s.K.Proc.Open(s.T.Pid, "pagemap", OpenMode.ReadOnly, out var f, privileged: false).OrThrow("open");
        f!.Lseek((long)(m / s.PS * 8), Whence.Set).OrThrow("lseek");
        var b = new byte[8];
        f.Read(b).OrThrow("read");
        ulong e = BinaryPrimitives.ReadUInt64LittleEndian(b);
        Assert.Equal(0UL, e & PagemapBits.PfnMask);
        Assert.NotEqual(0UL, e & PagemapBits.Present);
    }

    [Fact]
    public void Pagemap2_ExistsOnlyOnThe2013Kernel()
    {
        var modern = new Sim();
        Assert.Equal(Errno.ENOENT, modern.K.Proc.Open(modern.T.Pid, "pagemap2", OpenMode.ReadOnly, out _).Error);
        var old = new Sim(version: KernelVersion.Series2013);
        Assert.True(old.K.Proc.Open(old.T.Pid, "pagemap2", OpenMode.ReadOnly, out _).Ok);
    }

    [Fact]
    public void WriteOpen_IsEacces() =>
        Assert.Equal(Errno.EACCES, new Sim().K.Proc.Open(1000, "pagemap", OpenMode.WriteOnly, out _).Error);
}

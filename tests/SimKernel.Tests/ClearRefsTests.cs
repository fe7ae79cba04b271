using CriuSharp.SimKernel.Proc;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>clear_refs parsing and errors exactly as clear_refs_write() in fs/proc/task_mmu.c.</summary>
public class ClearRefsTests
{
    private static SysResult W(Sim s, byte[] data)
    {
        s.K.Proc.Open(s.T.Pid, "clear_refs", OpenMode.WriteOnly, out var f).OrThrow("open");
        return f!.Write(data);
    }

    private static byte[] A(string s) => System.Text.Encoding.ASCII.GetBytes(s);

    [Theory]
    [InlineData("4", 1)]
    [InlineData("4\n", 2)]
    [InlineData(" 4 \n", 4)]
    [InlineData("+4", 2)]
    [InlineData("04", 2)]
    [InlineData("000000000004", 12)]
    [InlineData("4           x", 12)]
    [InlineData("5", 1)]
    [InlineData("1", 1)]
    public void Accepted(string text, long returned)
    {
        var r = W(new Sim(), A(text));
        Assert.True(r.Ok, r.ToString());
        Assert.Equal(returned, r.Value);
    }

    [Fact]
    public void StopsAtNul_AndReturnsFullCount() => Assert.Equal(10, W(new Sim(), A("4\0garbage\0")).Value);

    [Fact]
    public void TheSeedsThreeByteWrite_OfATwoByteLiteral_IsAccepted() => Assert.Equal(3, W(new Sim(), [(byte)'4', 0, 0x55]).Value);

    [Theory]
    [InlineData("0")]
    [InlineData("6")]
    [InlineData("-1")]
    [InlineData("abc")]
    [InlineData("4x")]
    [InlineData("")]
    [InlineData("\n")]
    [InlineData("0x4")]
    [InlineData("0000000000004")]
    public void Rejected_WithEinval(string text) => Assert.Equal(Errno.EINVAL, W(new Sim(), A(text)).Error);

    [Fact]
    public void Overflow_GivesErange() => Assert.Equal(Errno.ERANGE, W(new Sim(), A("99999999999")).Error);

    [Fact]
    public void Five_IsRejectedOnThe2013Kernel() =>
        Assert.Equal(Errno.EINVAL, W(new Sim(version: KernelVersion.Series2013), A("5")).Error);

    [Fact]
    public void Read_GivesEinval()
    {
        var s = new Sim();
        s.K.Proc.Open(s.T.Pid, "clear_refs", OpenMode.ReadOnly, out var f).OrThrow("open");
        Assert.Equal(Errno.EINVAL, f!.Read(new byte[4]).Error);
    }

    [Fact]
    public void UnprivilegedReadOpen_GivesEacces()
    {
        var s = new Sim();
        Assert.Equal(Errno.EACCES, s.K.Proc.Open(s.T.Pid, "clear_refs", OpenMode.ReadOnly, out _, privileged: false).Error);
    }

    [Fact]
    public void Five_ResetsHiwaterToCurrentRss()
    {
        var s = new Sim();
        ulong m = s.Anon(64);
        for (ulong i = 0; i < 64; i++) s.W(m + i * s.PS);
        Assert.True(s.T.Munmap(m, 64 * s.PS).Ok);
        Assert.True(s.T.Mm.HiwaterRss > s.T.Mm.Rss);
        s.K.Proc.ClearRefs(s.T.Pid, "5").OrThrow("5");
        Assert.Equal(s.T.Mm.Rss, s.T.Mm.HiwaterRss);
        Assert.Contains($"VmHWM:\t{s.T.Mm.Rss * 4,8} kB", s.K.Proc.Status(s.T.Pid));
    }

    [Fact]
    public void One_ClearsReferenced_InSmaps()
    {
        var s = new Sim();
        ulong m = s.Anon(4);
        for (ulong i = 0; i < 4; i++) s.W(m + i * s.PS);
        Assert.Contains("Referenced:           16 kB", s.K.Proc.Smaps(s.T.Pid));
        s.K.Proc.ClearRefs(s.T.Pid, "1").OrThrow("1");
        Assert.DoesNotContain("Referenced:           16 kB", s.K.Proc.Smaps(s.T.Pid));
    }

    [Fact]
    public void Two_DoesNotTouchSharedAnonymousMemory_Three_Does()
    {
        var s = new Sim();
        ulong sh = s.SharedAnon(1);
        s.W(sh);
        ulong accessed = Arch.PteBitsX86_64.Accessed;
        s.K.Proc.ClearRefs(s.T.Pid, "2").OrThrow("2");
        Assert.NotEqual(0UL, s.T.Mm.Pt.Get(sh) & accessed);
        s.K.Proc.ClearRefs(s.T.Pid, "3").OrThrow("3");
        Assert.Equal(0UL, s.T.Mm.Pt.Get(sh) & accessed);
    }

    [Fact]
    public void Four_OnArm64_IsAcceptedAndChangesNothing()
    {
        var s = new Sim(Arch.ArchProfile.Arm64);
        ulong m = s.Anon(1);
        s.W(m);
        ulong before = s.T.Mm.Pt.Get(m);
        Assert.Equal(1, W(s, A("4")).Value);
        Assert.Equal(before, s.T.Mm.Pt.Get(m));
    }

    [Fact]
    public void GoneTask_GivesEsrch()
    {
        var s = new Sim();
        s.K.Exit(s.T, 0);
        s.K.Reap(s.T);
        Assert.Equal(Errno.ESRCH, s.K.Proc.ClearRefs(s.T.Pid, "4").Error);
    }
}

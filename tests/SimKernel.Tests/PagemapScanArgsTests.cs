using System.Buffers.Binary;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// PAGEMAP_SCAN called with user pointers: the checks of pagemap_scan_get_args in
/// fs/proc/task_mmu.c in their order, copy_from_user of the argument block, copy_to_user of the
/// vector and of walk_end. The expected errnos were also observed on a 6.18 host.
/// </summary>
public class PagemapScanArgsTests
{
    private sealed class Caller
    {
        public readonly Sim S = new();
        public readonly ulong Mem;
        public readonly ulong Arg;
        public readonly ulong Vec;
        public readonly ProcFile Pagemap;

        public Caller(int pages = 8)
        {
            Mem = S.Anon((ulong)pages);
            ulong scratch = S.Anon(16);
            Arg = scratch;
            Vec = scratch + S.PS;
            S.K.Proc.Open(S.T.Pid, "pagemap", OpenMode.ReadOnly, out var f).OrThrow("open");
            Pagemap = f!;
        }

        public SysResult Ioctl(PmScanArg a, ulong at = 0)
        {
            var b = new byte[96];
            a.Encode(b);
            S.T.Write(at == 0 ? Arg : at, b).OrThrow("store arg");
            return Pagemap.Ioctl(S.T, PageCategory.PagemapScanIoctl, at == 0 ? Arg : at);
        }

        public ulong WalkEnd()
        {
            var b = new byte[8];
            S.T.Read(Arg + PmScanArg.WalkEndOffset, b).OrThrow("load");
            return BinaryPrimitives.ReadUInt64LittleEndian(b);
        }

        public PageRegion Region(int i)
        {
            var b = new byte[24];
            S.T.Read(Vec + (ulong)i * 24, b).OrThrow("load");
            return new PageRegion(BinaryPrimitives.ReadUInt64LittleEndian(b), BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(8)),
                BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(16)));
        }

        public static PmScanArg Arg0(ulong start, ulong end, ulong vec, ulong vecLen) =>
            new() { Size = 96, Start = start, End = end, Vec = vec, VecLen = vecLen, ReturnMask = PageCategory.Present };
    }

    [Fact]
    public void UnalignedStart_ComesBefore_BadRange()
    {
        var c = new Caller();
        // Both wrong: the alignment check (EINVAL) is first.
        Assert.Equal(Errno.EINVAL, c.Ioctl(Caller.Arg0(c.Mem + 1, c.Mem - c.S.PS, 0, 0)).Error);
    }

    [Fact]
    public void BadRange_ComesBefore_NullVecWithLength()
    {
        var c = new Caller();
        // end < start makes access_ok's size wrap (EFAULT), checked before vec == 0 with vec_len (EINVAL).
        Assert.Equal(Errno.EFAULT, c.Ioctl(Caller.Arg0(c.Mem, c.Mem - c.S.PS, 0, 10)).Error);
        Assert.Equal(Errno.EINVAL, c.Ioctl(Caller.Arg0(c.Mem, c.Mem + c.S.PS, 0, 10)).Error);
    }

    [Fact]
    public void SizeAndFlags_ComeBefore_EverythingElse()
    {
        var c = new Caller();
        var a = Caller.Arg0(c.Mem + 1, c.Mem - 1, 0, 10);
        a.Size = 80;
        Assert.Equal(Errno.EINVAL, c.Ioctl(a).Error);
    }

    [Fact]
    public void VecBeyondTaskSize_Efault_BeforeAnyWalk()
    {
        var c = new Caller();
        ulong ts = c.S.K.Arch.TaskSize;
        Assert.Equal(Errno.EFAULT, c.Ioctl(Caller.Arg0(c.Mem, c.Mem + 8 * c.S.PS, ts - 24, 10)).Error);
        // vec_len * 24 overflowing 64 bits is an access_ok failure too.
        Assert.Equal(Errno.EFAULT, c.Ioctl(Caller.Arg0(c.Mem, c.Mem + 8 * c.S.PS, c.Vec, ulong.MaxValue / 8)).Error);
    }

    [Fact]
    public void StartEqualsEndEqualsTaskSize_ReturnsZero()
    {
        var c = new Caller();
        ulong ts = c.S.K.Arch.TaskSize;
        Assert.Equal(0, c.Ioctl(Caller.Arg0(ts, ts, 0, 0)).Value);
        Assert.Equal(Errno.EFAULT, c.Ioctl(Caller.Arg0(ts, ts + c.S.PS, 0, 0)).Error);
    }

    [Fact]
    public void UnmappedArgumentBlock_Efault()
    {
        var c = new Caller();
        Assert.Equal(Errno.EFAULT, c.Pagemap.Ioctl(c.S.T, PageCategory.PagemapScanIoctl, 16).Error);
        Assert.True(c.S.T.Alive); // a fault in copy_from_user is an error return, not a signal
    }

    [Fact]
    public void ReadOnlyVec_EfaultAtCopyOut_WalkEndStillWritten()
    {
        var c = new Caller();
        for (ulong i = 0; i < 8; i += 2) c.S.W(c.Mem + i * c.S.PS);
        ulong ro = c.S.Anon(1, Prot.Read);
        Assert.Equal(Errno.EFAULT, c.Ioctl(Caller.Arg0(c.Mem, c.Mem + 8 * c.S.PS, ro, 10)).Error);
        Assert.Equal(c.Mem + 8 * c.S.PS, c.WalkEnd());
    }

    [Fact]
    public void UserVec_RegionsCopiedOut()
    {
        var c = new Caller();
        c.S.W(c.Mem);
        c.S.W(c.Mem + c.S.PS);
        var r = c.Ioctl(Caller.Arg0(c.Mem, c.Mem + 8 * c.S.PS, c.Vec, 4));
        Assert.Equal(2, r.Value);
        Assert.Equal(new PageRegion(c.Mem, c.Mem + 2 * c.S.PS, PageCategory.Present), c.Region(0));
        Assert.Equal(new PageRegion(c.Mem + 2 * c.S.PS, c.Mem + 8 * c.S.PS, 0), c.Region(1));
        Assert.Equal(c.Mem + 8 * c.S.PS, c.WalkEnd());
    }

    [Fact]
    public void MoreRegionsThanOneBounceBuffer_AllReturned_WalkEndAtLastStop()
    {
        // 2000 pages alternating present / absent give 2000 regions; the kernel walks them in
        // batches of 512 and leaves walk_end where the last full batch stopped (page 1536).
        var s = new Sim();
        const int n = 2000;
        ulong m = s.Anon(n);
        for (ulong i = 0; i < n; i += 2) s.W(m + i * s.PS);
        var vec = new PageRegion[4000];
        var a = PmScanArg.Create(m, m + n * s.PS, 4000, 0, PageCategory.Present);
        Assert.Equal(n, s.K.Proc.PagemapScan(s.T.Pid, ref a, vec).Value);
        Assert.Equal(m + 1536 * s.PS, a.WalkEnd);
        Assert.Equal(new PageRegion(m + 1999 * s.PS, m + n * s.PS, 0), vec[n - 1]);
    }

    [Fact]
    public void NoVec_MaxPagesIgnored_WalkEndAtEnd()
    {
        var s = new Sim();
        ulong m = s.Anon(4);
        for (ulong i = 0; i < 4; i++) s.W(m + i * s.PS);
        var a = PmScanArg.Create(m, m + 4 * s.PS, 0, 0, PageCategory.Present, maxPages: 1);
        Assert.Equal(0, s.K.Proc.PagemapScan(s.T.Pid, ref a, []).Value);
        Assert.Equal(m + 4 * s.PS, a.WalkEnd);
    }

    [Fact]
    public void CheckWpAsync_Eperm_WalkEndAtEnd()
    {
        var s = new Sim();
        ulong m = s.Anon(4);
        var a = PmScanArg.Create(m, m + 4 * s.PS, 0, 0, 0, flags: PageCategory.ScanCheckWpAsync);
        Assert.Equal(Errno.EPERM, s.K.Proc.PagemapScan(s.T.Pid, ref a, []).Error);
        Assert.Equal(m + 4 * s.PS, a.WalkEnd);
    }
}

using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>One test per soft-dirty rule of Documentation/admin-guide/mm/soft-dirty.rst and mm/ (rule IDs in the names).</summary>
public class SoftDirtyRuleTests
{
    [Fact]
    public void S2_StoreThroughWritablePte_SetsOnlyHardwareDirty()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.W(m);
        s.Clear();
        s.W(m);            // write-protect fault: soft-dirty again
        Assert.True(s.SD(m));
        long faults = s.T.Mm.WpFaults;
        s.W(m + 8);        // writable now: no fault, no change
        Assert.Equal(faults, s.T.Mm.WpFaults);
    }

    [Fact]
    public void S4_ReadThenWrite_CopiesZeroPageToANewDirtyPage()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.Clear();
        _ = s.R(m);
        Assert.False(s.SD(m));
        ulong zeroPfn = s.PM(m) & PagemapBits.PfnMask;
        s.W(m);
        Assert.True(s.SD(m));
        Assert.NotEqual(zeroPfn, s.PM(m) & PagemapBits.PfnMask);
    }

    [Fact]
    public void S5_ExclusivePageIsReusedAfterClear_SamePfn()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.W(m);
        ulong pfn = s.PM(m) & PagemapBits.PfnMask;
        s.Clear();
        s.W(m);
        Assert.Equal(pfn, s.PM(m) & PagemapBits.PfnMask);
        Assert.True(s.SD(m));
    }

    [Fact]
    public void S5_SharedFileMapping_WriteAfterClearFaultsAndMarks()
    {
        var s = new Sim();
        var f = s.K.Fs.Create("/f", new byte[s.PS]);
        ulong m = (ulong)s.T.Mmap(0, s.PS, Prot.Read | Prot.Write, MapFlags.Shared, f).OrThrow("mmap");
        s.W(m);
        s.Clear();
        _ = s.R(m);
        Assert.False(s.SD(m));
        s.W(m);
        Assert.True(s.SD(m));
    }

    [Fact]
    public void S7_PopulateRead_DoesNotSet_S6_PopulateWrite_Does()
    {
        var s = new Sim();
        ulong m = s.Anon(2);
        s.Clear();
        Assert.True(s.Madv(m, 1, Madvise.PopulateRead).Ok);
        Assert.True(s.Madv(m + s.PS, 1, Madvise.PopulateWrite).Ok);
        Assert.False(s.SD(m));
        Assert.True(s.SD(m + s.PS));
        Assert.Equal(Errno.EINVAL, s.T.Madvise(s.Anon(1, Prot.Read), s.PS, Madvise.PopulateWrite).Error);
    }

    [Fact]
    public void S8_MremapMove_MarksMovedPages_PresentAndSwapped()
    {
        var s = new Sim();
        ulong m = s.Anon(4);
        s.W(m);
        s.W(m + s.PS);
        Assert.True(s.Madv(m + s.PS, 1, Madvise.PageOut).Ok);
        s.Clear();
        ulong target = m + 64 * s.PS;
        ulong dest = (ulong)s.T.Mremap(m, 4 * s.PS, 8 * s.PS, MremapFlags.MayMove | MremapFlags.Fixed, target).OrThrow("mremap");
        Assert.Equal(target, dest);
        Assert.Null(s.T.Mm.Find(m));
        Assert.True(s.SD(dest));
        Assert.True(s.SD(dest + s.PS));
        Assert.True(s.PM(dest + s.PS) is var e && (e & PagemapBits.Swap) != 0);
        Assert.False(s.SD(dest + 2 * s.PS)); // untouched page of a cleared VMA stays clean
        Assert.Equal(1, s.R(dest));
    }

    [Fact]
    public void S9_WriteToThp_MarksAll512Pages_AndDoesNotSplit()
    {
        var s = new Sim();
        ulong hs = s.K.Arch.HugePageSize;
        ulong m = s.Anon(2 * hs / s.PS);
        ulong aligned = (m + hs - 1) & ~(hs - 1);
        Assert.True(s.T.Madvise(m, 2 * hs, Madvise.HugePage).Ok);
        s.W(aligned);
        s.Clear();
        Assert.False(s.SD(aligned + 100 * s.PS));
        s.W(aligned + 5);
        var e = s.K.Proc.ReadPagemap(s.T.Pid, aligned, 512);
        Assert.All(e, x => Assert.NotEqual(0UL, x & PagemapBits.SoftDirty));
        Assert.Contains("AnonHugePages:      2048 kB", s.K.Proc.Smaps(s.T.Pid));
    }

    [Fact]
    public void S10_NewVmaIsMarked_AndMergingIntoAClearedNeighbourMarksTheWholeResult()
    {
        var s = new Sim();
        ulong m = s.Anon(2);
        s.W(m);
        s.Clear();
        Assert.False(s.SD(m));
        ulong next = (ulong)s.T.Mmap(m + 2 * s.PS, s.PS, Prot.Read | Prot.Write,
            MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed).OrThrow("mmap");
        Assert.Equal(m + 2 * s.PS, next);
        Assert.Single(s.T.Mm.Vmas, v => v.Start == m);       // merged
        Assert.True(s.SD(m));                                 // old part marked too (S10.2, FP1)
        Assert.True(s.SD(next));
    }

    [Fact]
    public void S10_3_BrkGrowthMarksTheHeap()
    {
        var s = new Sim();
        ulong start = s.T.Mm.StartBrk;
        s.T.Brk(start + 3 * s.PS);
        s.W(start);
        s.Clear();
        Assert.False(s.SD(start));
        s.T.Brk(start + 6 * s.PS);
        Assert.True(s.SD(start));
        Assert.Contains("[heap]", s.K.Proc.Maps(s.T.Pid));
    }

    [Fact]
    public void UnmapAndMapAgain_IsDirtyOnModern_AndTheBlindSpotOn2013()
    {
        foreach (var (version, expectDirty) in new[] { (KernelVersion.Modern, true), (KernelVersion.Series2013, false) })
        {
            var s = new Sim(version: version);
            ulong m = s.Anon(1);
            s.W(m, 9);
            s.Clear();
            s.T.Munmap(m, s.PS).OrThrow("munmap");
            s.T.Mmap(m, s.PS, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed).OrThrow("mmap");
            // The contents changed (9 → 0) but the page is not present: only VM_SOFTDIRTY can say so.
            Assert.Equal(0, s.R(m));
            var e = s.K.Proc.ReadPagemap(s.T.Pid, m, 1, PagemapLayout.Pagemap2)[0];
            Assert.Equal(expectDirty, (e & PagemapBits.SoftDirty) != 0);
        }
    }

    [Fact]
    public void K1_SwapKeepsSoftDirty_AndSwapInRestoresIt()
    {
        var s = new Sim();
        ulong m = s.Anon(2);
        s.W(m);
        s.W(m + s.PS);
        s.Clear();
        s.W(m);
        Assert.True(s.Madv(m, 2, Madvise.PageOut).Ok);
        Assert.True(s.SD(m));
        Assert.False(s.SD(m + s.PS));
        _ = s.R(m);
        _ = s.R(m + s.PS);
        Assert.True(s.SD(m));
        Assert.False(s.SD(m + s.PS));
    }

    [Fact]
    public void K1_On2013Kernel_SwapLosesSoftDirty()
    {
        var s = new Sim(version: KernelVersion.Series2013);
        ulong m = s.Anon(1);
        s.Clear();
        s.W(m);
        Assert.True(s.Madv(m, 1, Madvise.PageOut).Ok);
        _ = s.R(m);
        Assert.Equal(0UL, s.K.Proc.ReadPagemap(s.T.Pid, m, 1, PagemapLayout.Pagemap2)[0] & PagemapBits.SoftDirty);
    }

    [Fact]
    public void K3_MprotectKeepsTheBit_AndWritesStillFault()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.W(m);
        s.Clear();
        s.T.Mprotect(m, s.PS, Prot.Read).OrThrow("ro");
        s.T.Mprotect(m, s.PS, Prot.Read | Prot.Write).OrThrow("rw");
        Assert.False(s.SD(m));
        s.W(m);
        Assert.True(s.SD(m));
    }

    [Fact]
    public void K4_ThpSplitAfterClear_MarksEveryPteWhenThePmdWasDirty_FP2()
    {
        var s = new Sim();
        ulong hs = s.K.Arch.HugePageSize;
        ulong m = s.Anon(2 * hs / s.PS);
        ulong a = (m + hs - 1) & ~(hs - 1);
        s.T.Madvise(m, 2 * hs, Madvise.HugePage).OrThrow("madvise");
        s.W(a);
        s.Clear();
        s.T.Mprotect(a, s.PS, Prot.Read).OrThrow("split by mprotect");
        var e = s.K.Proc.ReadPagemap(s.T.Pid, a, 512);
        Assert.All(e, x => Assert.NotEqual(0UL, x & PagemapBits.SoftDirty));
    }

    [Fact]
    public void K5_ForkKeepsBits_AndTheFirstWriteOnEitherSideCopies()
    {
        var s = new Sim();
        ulong m = s.Anon(2);
        s.W(m, 3);
        s.W(m + s.PS, 4);
        s.Clear();
        s.W(m, 5);
        var child = s.K.Fork(s.T);
        Assert.True((s.PM(child, m) & PagemapBits.SoftDirty) != 0);
        Assert.False((s.PM(child, m + s.PS) & PagemapBits.SoftDirty) != 0);
        Assert.Equal(0UL, s.PM(child, m + s.PS) & PagemapBits.Exclusive); // shared after fork
        child.Write(m + s.PS, [9]).OrThrow("child write");
        Assert.True((s.PM(child, m + s.PS) & PagemapBits.SoftDirty) != 0);
        Assert.NotEqual(0UL, s.PM(m + s.PS) & PagemapBits.Exclusive); // the parent's page is exclusive again
        Assert.Equal(4, s.R(m + s.PS));
        var b = new byte[1];
        child.Read(m + s.PS, b).OrThrow("child read");
        Assert.Equal(9, b[0]);
    }

    [Fact]
    public void C4_DontNeedZapsThePage_FN4_ReadsNotPresentNotDirty()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.W(m, 5);
        s.Clear();
        Assert.True(s.Madv(m, 1, Madvise.DontNeed).Ok);
        Assert.Equal(0UL, s.PM(m));
        Assert.Equal(0, s.R(m));
    }

    [Fact]
    public void C5_SharedMemoryPageOut_LosesTheBit_FN2()
    {
        var s = new Sim();
        ulong m = s.SharedAnon(1);
        s.Clear();
        s.W(m, 6);
        Assert.True(s.SD(m));
        Assert.True(s.Madv(m, 1, Madvise.PageOut).Ok);
        Assert.False(s.SD(m));
        Assert.Equal(6, s.R(m)); // the contents survive in shmem
    }

    [Fact]
    public void C2_PinnedPagesAreNeverCleared_FP3()
    {
        var s = new Sim();
        ulong m = s.Anon(2);
        s.W(m);
        s.W(m + s.PS);
        s.T.PinPage(m).OrThrow("pin");
        s.Clear();
        Assert.True(s.SD(m));
        Assert.False(s.SD(m + s.PS));
    }

    [Fact]
    public void FN1_MprotectMergeLosesVmSoftDirty_On612_ButNotWithTheStickyMerge()
    {
        foreach (var (version, expectDirty) in new[] { (KernelVersion.Linux612, false), (KernelVersion.Modern, true) })
        {
            var s = new Sim(version: version);
            ulong m = s.Anon(1);
            s.Clear();
            // A new neighbour with another protection: marked, not merged.
            ulong n = (ulong)s.T.Mmap(m + s.PS, s.PS, Prot.Read | Prot.Write | Prot.Exec,
                MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed).OrThrow("mmap");
            Assert.True(s.SD(n));
            // mprotect makes the old, cleared VMA equal to it: they merge, and before the sticky
            // rule the result takes the changed VMA's flags, losing VM_SOFTDIRTY.
            s.T.Mprotect(m, s.PS, Prot.Read | Prot.Write | Prot.Exec).OrThrow("mprotect");
            Assert.Single(s.T.Mm.Vmas, v => v.Start == m && v.End == m + 2 * s.PS);
            Assert.Equal(expectDirty, s.SD(n));
            Assert.Equal(expectDirty, s.SD(m));
        }
    }

    [Fact]
    public void FN1_MremapMergeIntoClearedNeighbour_LosesVmSoftDirtyOn612()
    {
        foreach (var (version, expectDirty) in new[] { (KernelVersion.Linux612, false), (KernelVersion.Modern, true) })
        {
            var s = new Sim(version: version);
            ulong r = s.Anon(5, Prot.None);
            s.T.Munmap(r, 4 * s.PS).OrThrow("munmap");
            s.T.Mmap(r + s.PS, s.PS, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed).OrThrow("a");
            s.Clear();
            s.T.Mmap(r + 3 * s.PS, s.PS, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed).OrThrow("b");
            s.T.Mremap(r + 3 * s.PS, s.PS, s.PS, MremapFlags.MayMove | MremapFlags.Fixed, r + 2 * s.PS).OrThrow("mremap");
            Assert.Single(s.T.Mm.Vmas, v => v.Start == r + s.PS && v.End == r + 3 * s.PS);
            Assert.Equal(expectDirty, s.SD(r + 2 * s.PS));
        }
    }

    [Fact]
    public void Segv_OnWriteToReadOnlyMapping_KillsOnlyTheTask()
    {
        var s = new Sim();
        ulong m = s.Anon(1, Prot.Read);
        var r = s.T.Write(m + 16, [1]);
        Assert.Equal(Errno.EFAULT, r.Error);
        Assert.Equal(SimTask.SIGSEGV, s.T.TermSignal);
        Assert.Equal(m + 16, s.T.FaultAddress);
        Assert.Equal(TaskState.Zombie, s.T.State);
    }

    [Fact]
    public void FailedMunmapOrMprotect_LeavesTheAddressSpaceUnchanged()
    {
        var s = new Sim();
        ulong m = s.Anon(4);
        string before = s.K.Proc.Maps(s.T.Pid);
        Assert.Equal(Errno.EINVAL, s.T.Munmap(m + 1, s.PS).Error);
        Assert.Equal(Errno.ENOMEM, s.T.Mprotect(m, 64 * s.PS, Prot.Read).Error);
        Assert.Equal(Errno.EFAULT, s.T.Mremap(m + 2 * s.PS, 4 * s.PS, 8 * s.PS, MremapFlags.MayMove).Error);
        Assert.Equal(Errno.EINVAL, s.T.Mremap(m, s.PS, 2 * s.PS, MremapFlags.Fixed, 0x10000000).Error);
        Assert.Equal(before, s.K.Proc.Maps(s.T.Pid));
    }

    [Fact]
    public void MmapErrors_AreLinuxErrnos()
    {
        var s = new Sim();
        Assert.Equal(Errno.EINVAL, s.T.Mmap(0, 0, Prot.Read, MapFlags.Private | MapFlags.Anonymous).Error);
        Assert.Equal(Errno.EINVAL, s.T.Mmap(0, s.PS, Prot.Read, MapFlags.Anonymous).Error);
        Assert.Equal(Errno.EBADF, s.T.Mmap(0, s.PS, Prot.Read, MapFlags.Private).Error);
        Assert.Equal(Errno.EINVAL, s.T.Mmap(0x10001, s.PS, Prot.Read, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed).Error);
        ulong m = s.Anon(1);
        Assert.Equal(Errno.EEXIST, s.T.Mmap(m, s.PS, Prot.Read, MapFlags.Private | MapFlags.Anonymous | MapFlags.FixedNoReplace).Error);
        var small = new Sim();
        var tiny = new Kernel(new KernelConfig { MemoryBytes = 1 << 20 });
        var t = tiny.Spawn("t");
        ulong big = (ulong)t.Mmap(0, 64UL << 20, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous).OrThrow("mmap");
        Assert.Equal(Errno.ENOMEM, t.Madvise(big, 64UL << 20, Madvise.PopulateWrite).Error);
        _ = small;
    }
}

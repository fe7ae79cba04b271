using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>Raw pagemap values and PTE bits against Documentation/admin-guide/mm/pagemap.rst and the architectures' pgtable headers.</summary>
public class RawValueTests
{
    [Fact]
    public void UntouchedPage_InFreshVma_ReadsOnlyBit55()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        Assert.Equal(0x0080000000000000UL, s.PM(m));
        s.Clear();
        Assert.Equal(0UL, s.PM(m));
    }

    [Fact]
    public void UnmappedAddress_ReadsZero() => Assert.Equal(0UL, new Sim().PM(0x10000));

    [Fact]
    public void ReadFault_MapsZeroPage_PresentNotExclusiveNotFile()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.Clear();
        _ = s.R(m);
        ulong e = s.PM(m);
        Assert.Equal(PagemapBits.Present, e & ~PagemapBits.PfnMask);
        Assert.Equal((ulong)s.K.Memory.ZeroPfn, e & PagemapBits.PfnMask);
    }

    [Fact]
    public void WrittenPage_IsPresentExclusiveSoftDirty_WithItsOwnPfn()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.Clear();
        s.W(m);
        ulong e = s.PM(m);
        Assert.Equal(PagemapBits.Present | PagemapBits.Exclusive | PagemapBits.SoftDirty, e & ~PagemapBits.PfnMask);
        Assert.NotEqual((ulong)s.K.Memory.ZeroPfn, e & PagemapBits.PfnMask);
    }

    [Fact]
    public void X86Pte_UsesBit11ForSoftDirty_AndClearingWriteProtects()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.W(m);
        ulong pte = s.T.Mm.Pt.Get(m);
        Assert.NotEqual(0UL, pte & (1UL << 11));
        Assert.NotEqual(0UL, pte & PteBitsX86_64.Rw);
        Assert.NotEqual(0UL, pte & PteBitsX86_64.Dirty);
        s.Clear();
        pte = s.T.Mm.Pt.Get(m);
        Assert.Equal(0UL, pte & (1UL << 11));
        Assert.Equal(0UL, pte & PteBitsX86_64.Rw);
        Assert.NotEqual(0UL, pte & PteBitsX86_64.Dirty); // hardware dirty is kept (C1b)
    }

    [Fact]
    public void SwappedPage_X86SwapEntryCarriesSoftDirtyInBit1_AndPagemapShowsTypeAndOffset()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.W(m, 7);
        Assert.True(s.Madv(m, 1, Madvise.PageOut).Ok);
        ulong pte = s.T.Mm.Pt.Get(m);
        Assert.Equal(0UL, pte & PteBitsX86_64.Present);
        Assert.NotEqual(0UL, pte & PteBitsX86_64.SwpSoftDirty);
        // type 0, offset 1 (the first slot after the swap header): 0x4000000000000020, plus bit 55.
        Assert.Equal(0x4000000000000020UL | PagemapBits.SoftDirty, s.PM(m));
        s.Clear();
        Assert.Equal(0x4000000000000020UL, s.PM(m));
        Assert.Equal(7, s.R(m)); // swap-in restores the contents
    }

    [Fact]
    public void UffdWpMarker_OnEmptyPte_Reads420000000000003f()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.T.OpenUserfaultfd(out var uffd).OrThrow("uffd");
        uffd!.ApiHandshake(0xAA, CriuSharp.KernelApi.UffdConstants.FeatureWpAsync | CriuSharp.KernelApi.UffdConstants.FeatureWpUnpopulated, out _).OrThrow("api");
        uffd.Register(m, s.PS, CriuSharp.KernelApi.UffdConstants.RegisterModeWp).OrThrow("register");
        uffd.WriteProtect(m, s.PS, true).OrThrow("wp");
        s.Clear();
        Assert.Equal(0x420000000000003fUL, s.PM(m));
    }

    [Fact]
    public void GuardPage_Reads440000000000009f()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        Assert.True(s.Madv(m, 1, Madvise.GuardInstall).Ok);
        s.Clear();
        Assert.Equal(0x440000000000009fUL, s.PM(m));
        Assert.False(s.T.Write(m, [1]).Ok);
        Assert.Equal(SimTask.SIGSEGV, s.T.TermSignal);
    }

    [Fact]
    public void PrivateFilePage_ReadIsPresentFileExclusive_AfterCowNotFile()
    {
        var s = new Sim();
        var f = s.K.Fs.Create("/data/f", new byte[s.PS * 2]);
        ulong m = (ulong)s.T.Mmap(0, 2 * s.PS, Prot.Read | Prot.Write, MapFlags.Private, f).OrThrow("mmap");
        _ = s.R(m);
        Assert.Equal(PagemapBits.Present | PagemapBits.File | PagemapBits.Exclusive | PagemapBits.SoftDirty, s.PM(m) & ~PagemapBits.PfnMask);
        s.W(m);
        Assert.Equal(0UL, s.PM(m) & PagemapBits.File);
    }

    [Fact]
    public void SharedFilePage_MappedTwice_IsNotExclusive()
    {
        var s = new Sim();
        var f = s.K.Fs.Create("/data/g", new byte[s.PS]);
        ulong a = (ulong)s.T.Mmap(0, s.PS, Prot.Read, MapFlags.Shared, f).OrThrow("a");
        ulong b = (ulong)s.T.Mmap(0, s.PS, Prot.Read, MapFlags.Shared, f).OrThrow("b");
        _ = s.R(a);
        Assert.NotEqual(0UL, s.PM(a) & PagemapBits.Exclusive);
        _ = s.R(b);
        s.Clear();
        Assert.Equal(PagemapBits.Present | PagemapBits.File, s.PM(a) & ~PagemapBits.PfnMask);
    }

    [Fact]
    public void V1Layout_HoleIsPageShiftAndPresentIs86()
    {
        var s = new Sim(version: KernelVersion.Series2013);
        ulong m = s.Anon(2);
        s.W(m);
        var e = s.K.Proc.ReadPagemap(s.T.Pid, m, 2);
        Assert.Equal(0x86UL << 56, e[0] & ~PagemapBits.PfnMask);
        Assert.Equal(0x0600000000000000UL, e[1]);
    }

    [Fact]
    public void Arm64_NeverReportsBit55_AndHasNoSdInSmaps()
    {
        var s = new Sim(ArchProfile.Arm64);
        ulong m = s.Anon(2);
        s.W(m);
        Assert.Equal(0UL, s.PM(m) & PagemapBits.SoftDirty);
        Assert.Equal(0UL, s.PM(m + s.PS) & PagemapBits.SoftDirty);
        Assert.DoesNotContain(" sd ", s.K.Proc.Smaps(s.T.Pid));
        Assert.False(s.K.Features.MemDirtyTrack);
        Assert.True(s.K.Features.UffdWpAsync);
    }

    [Fact]
    public void Ppc64_Uses64KPages_AndBit0x10ForSoftDirty()
    {
        var s = new Sim(ArchProfile.Ppc64);
        Assert.Equal(65536UL, s.PS);
        ulong m = s.Anon(2);
        s.Clear();
        s.W(m + 100);
        Assert.NotEqual(0UL, s.T.Mm.Pt.Get(m) & PteBitsPpc64.SoftDirty);
        Assert.True(s.SD(m));
        Assert.False(s.SD(m + s.PS));
        Assert.Equal(m / s.PS * 8, m >> 13); // pagemap offset is va / 64 KiB * 8
    }

    [Fact]
    public void Maps_FormatsLikeTheKernel()
    {
        var s = new Sim();
        ulong m = s.Anon(3);
        string maps = s.K.Proc.Maps(s.T.Pid);
        Assert.Contains($"{m:x8}-{m + 3 * s.PS:x8} rw-p 00000000 00:00 0 \n", maps);
        string stackLine = maps.Split('\n').Single(l => l.EndsWith("[stack]", StringComparison.Ordinal));
        Assert.Equal(73, stackLine.IndexOf('[', StringComparison.Ordinal));
        Assert.Contains("VmFlags: rd wr mr mw me ac sd \n", s.K.Proc.Smaps(s.T.Pid));
    }
}

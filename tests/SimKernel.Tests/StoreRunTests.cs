using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// The batched no-fault store path (MmStruct.StoreRun / ExchangeRun, used by the uniform workload)
/// must do exactly what the same stores one by one would, and stop at the first store that needs
/// the kernel.
/// </summary>
public class StoreRunTests
{
    public static TheoryData<string> Arches => new() { "x86_64", "arm64", "ppc64" };

    private static ArchProfile Arch(string name) => ArchProfile.Parse(name);

    [Theory, MemberData(nameof(Arches))]
    public void StoreRun_StopsAtTheFirstStoreThatWouldFault_AndWritesEverythingBefore(string arch)
    {
        var s = new Sim(Arch(arch));
        ulong m = s.Anon(4);
        for (ulong p = 0; p < 4; p++)
            s.W(m + p * s.PS);
        s.W(m + 2 * s.PS); // all four present and writable
        var protect = s.T.Mprotect(m + 2 * s.PS, s.PS, Prot.Read);
        Assert.True(protect.Ok);
        ulong[] vas = [m + 8, m + s.PS + 16, m + 2 * s.PS + 24, m + 3 * s.PS + 8];
        ulong[] values = [11, 22, 33, 44];

        int done = s.T.Mm.StoreRun(vas, values);

        Assert.Equal(2, done);
        Assert.Equal(11UL, Load(s, vas[0]));
        Assert.Equal(22UL, Load(s, vas[1]));
        Assert.Equal(0UL, Load(s, vas[2]));
        Assert.Equal(0UL, Load(s, vas[3])); // after the stop nothing is stored
    }

    [Theory, MemberData(nameof(Arches))]
    public void StoreRun_StopsAtWriteProtectedEntries_WithoutTakingTheFault(string arch)
    {
        var s = new Sim(Arch(arch));
        ulong m = s.Anon(2);
        s.W(m);
        s.W(m + s.PS);
        bool tracked = s.K.Arch.SoftDirty != 0;
        if (tracked)
            s.Clear(); // soft-dirty armed: every entry write-protected
        long faults = s.T.Mm.WpFaults;
        ulong[] vas = [m + 8, m + s.PS + 8];
        ulong[] values = [5, 6];

        int done = s.T.Mm.StoreRun(vas, values);

        Assert.Equal(tracked ? 0 : 2, done);
        Assert.Equal(faults, s.T.Mm.WpFaults);
        if (tracked)
        {
            Assert.False(s.SD(m)); // the run left the fault (and the soft-dirty bit) to the kernel's path
            Assert.True(s.T.StoreU64(m + 8, 5));
            Assert.True(s.SD(m));
        }
    }

    [Fact]
    public void StoreRun_RefusesMisalignedAndUnmappedAddresses()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.W(m);
        Assert.Equal(0, s.T.Mm.StoreRun([m + 4], [1UL]));
        Assert.Equal(0, s.T.Mm.StoreRun([m + 64 * s.PS], [1UL]));
        Assert.Equal(0, s.T.Mm.StoreRun([0x1000UL], [1UL]));
    }

    [Fact]
    public void ExchangeRun_ReturnsOldValues_InOrder_AndSeesItsOwnEarlierStores()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.W(m);
        Assert.True(s.T.StoreU64(m + 8, 100));
        ulong[] vas = [m + 8, m + 8, m + 16];
        ulong[] values = [1, 2, 3];
        ulong[] olds = new ulong[3];

        Assert.Equal(3, s.T.Mm.ExchangeRun(vas, values, olds));

        Assert.Equal([100UL, 1UL, 0UL], olds);
        Assert.Equal(2UL, Load(s, m + 8));
        Assert.Equal(3UL, Load(s, m + 16));
    }

    [Fact]
    public void StoreRun_SetsHardwareAccessedAndDirty_OnAStoreThroughACleanEntry()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        s.W(m);
        var arch = s.K.Arch;
        var t = s.T.Mm.Pt.PteTableFor(m)!;
        int i = s.T.Mm.Pt.PteIndex(m);
        t.E[i] &= ~(arch.Accessed | arch.Dirty); // as after the kernel clears them (e.g. clear_refs 1..3, writeback)

        Assert.Equal(1, s.T.Mm.StoreRun([m + 8], [9UL]));

        Assert.Equal(arch.Accessed | arch.Dirty, t.E[i] & (arch.Accessed | arch.Dirty));
        Assert.Equal(9UL, Load(s, m + 8));
    }

    private static ulong Load(Sim s, ulong va)
    {
        Assert.True(s.T.LoadU64(va, out ulong v));
        return v;
    }
}

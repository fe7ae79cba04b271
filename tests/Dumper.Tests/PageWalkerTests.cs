using CriuSharp.Dumper.Proc;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.Dumper.Tests;

public class PageWalkerTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void WalkInParts_GivesTheSpansOfOneWalk(bool scan)
    {
        // A 3,001-page VMA with runs of different kinds crossing the part edges: populated pages,
        // holes, swapped pages; parts of 1,000 and 1,001 pages.
        var k = RoundTrip.NewKernel();
        var t = k.Spawn("walk", 800);
        ulong a = Procs.Map(t, 3001);
        Procs.Fill(t, a, 3001, 5);
        Assert.True(t.Madvise(a + 990UL * 4096, 30UL * 4096, Madvise.DontNeed).Ok);
        Assert.True(t.Madvise(a + 1995UL * 4096, 12UL * 4096, Madvise.PageOut).Ok);
        Assert.True(t.Madvise(a + 2500UL * 4096, 1UL * 4096, Madvise.DontNeed).Ok);
        var api = new ClockOnlyHost(k).AsKernelApi();
        var vma = SmapsParser.Parse(api.Smaps(800)).Single(v => v.Start == a);
        using var walker = new PageWalker(api, scan, DirtySource.Always);
        var one = new List<PageSpan>();
        walker.Walk(800, vma, one);
        foreach (int parts in new[] { 2, 3, 7 })
        {
            var joined = new List<PageSpan>();
            walker.WalkInParts(800, vma, joined, parts, concurrently: false);
            Assert.Equal(one, joined);
        }
        Assert.True(one.Count >= 4, $"{one.Count} spans: the VMA should have runs of several kinds");
    }
}

using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using CriuSharp.SimKernel.Uffd;
using FsCheck;
using FsCheck.Fluent;
using Microsoft.FSharp.Core;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// Several threads write at random into one address space that mixes small pages, a THP and a
/// hugetlb page, while at random points a tracker takes the "written since last time" set the way
/// a pre-dump does (PAGEMAP_SCAN with PM_SCAN_WP_MATCHING over uffd-wp async ranges). Property: a
/// page written by any thread since the previous scan is always in the next scan (no lost write),
/// and the threads' own write-protect fault counts add up to the address space's.
/// </summary>
public class ThreadTrackingPropertyTests
{
    public sealed record Op(int Thread, int Page, byte Value, bool Scan);

    private const int Threads = 4;
    private const int SmallPages = 64;
    private const ulong H = 2UL << 20;

    private static readonly Gen<Op> OpGen =
        from thread in Gen.Choose(0, Threads - 1)
        from page in Gen.Choose(0, SmallPages + 2 * 512 - 1) // small pages, then the THP, then the hugetlb page
        from value in Gen.Choose(1, 255)
        from scan in Gen.Frequency((1, Gen.Constant(true)), (6, Gen.Constant(false)))
        select new Op(thread, page, (byte)value, scan);

    private static Config Deterministic(ulong seed, int tests) =>
        Config.QuickThrowOnFailure.WithMaxTest(tests)
              .WithReplay(FSharpOption<Replay>.Some(new Replay(new Rnd(seed, 0x9E3779B97F4A7C15UL | 1), FSharpOption<int>.None)));

    private static bool Run(List<Op> ops)
    {
        var s = new Sim(thp: ThpMode.Always);
        s.K.Hugetlb.Write("/proc/sys/vm/nr_hugepages", "1").OrThrow("pool");
        ulong ps = s.PS;
        ulong small = s.Anon(SmallPages);
        ulong area = s.Anon(1024);
        ulong thp = (area + H - 1) & ~(H - 1);
        ulong huge = (ulong)s.T.Mmap(0, H, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb).OrThrow("hugetlb");
        ulong Va(int page) => page < SmallPages ? small + (ulong)page * ps
            : page < SmallPages + 512 ? thp + (ulong)(page - SmallPages) * ps
            : huge + (ulong)(page - SmallPages - 512) * ps;
        (ulong Start, ulong Len)[] ranges = [(small, SmallPages * ps), (thp, H), (huge, H)];

        s.T.OpenUserfaultfd(out var uffd).OrThrow("uffd");
        uffd!.ApiHandshake(UffdConstants.Api, UffdConstants.FeatureWpAsync | UffdConstants.FeatureWpUnpopulated
                                              | UffdConstants.FeatureWpHugetlbfsShmem, out _).OrThrow("api");
        foreach (var (st, len) in ranges)
            uffd.Register(st, len, UffdConstants.RegisterModeWp).OrThrow("register");
        var threads = new SimTask[Threads];
        threads[0] = s.T;
        for (int i = 1; i < Threads; i++)
            threads[i] = s.K.CloneThread(s.T);

        var vec = new PageRegion[2048];
        HashSet<ulong> Scan()
        {
            var seen = new HashSet<ulong>();
            foreach (var (st, len) in ranges)
            {
                var a = PmScanArg.Create(st, st + len, (ulong)vec.Length, PageCategory.Written, PageCategory.Written,
                    flags: PageCategory.ScanWpMatching | PageCategory.ScanCheckWpAsync);
                long n = s.K.Proc.PagemapScan(s.T.Pid, ref a, vec).OrThrow("scan");
                for (int i = 0; i < n; i++)
                    for (ulong va = vec[i].Start; va < vec[i].End; va += ps)
                        seen.Add(va);
            }
            return seen;
        }

        Scan(); // arm everything, as the first pre-dump does
        var written = new HashSet<ulong>();
        long wpBefore = s.T.Mm.WpFaults, threadWpBefore = threads.Sum(t => t.WpFlt);
        foreach (var op in ops)
        {
            if (op.Scan)
            {
                var seen = Scan();
                if (!written.IsSubsetOf(seen))
                    return false;
                written.Clear();
                continue;
            }
            ulong va = Va(op.Page);
            threads[op.Thread].Write(va, [op.Value]).OrThrow("store");
            written.Add(va);
        }
        var last = Scan();
        return written.IsSubsetOf(last)
               && s.T.Mm.WpFaults - wpBefore == threads.Sum(t => t.WpFlt) - threadWpBefore;
    }

    [Fact]
    public void RandomThreadWrites_WithRandomScans_NeverLoseAWrite()
    {
        Check.One(Deterministic(20261206, 40),
            Prop.ForAll(Gen.ListOf(OpGen, 60).Select(l => l.ToList()).ToArbitrary(), ops => Run(ops)));
    }
}

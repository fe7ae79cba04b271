using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using FsCheck;
using FsCheck.Fluent;
using Microsoft.FSharp.Core;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// Random sequences of memory operations against invariants that must hold after every step:
/// no changed page reads clean (the soft-dirty guarantee CRIU relies on), pagemap and PAGEMAP_SCAN
/// agree, and arm64 never reports soft-dirty. Seeds are fixed so every run is the same.
/// </summary>
public class PropertyTests
{
    public enum OpKind { Mmap, MmapShared, Munmap, Mprotect, MremapMove, MremapGrow, DontNeed, PageOut, PopulateRead, PopulateWrite, HugePage, Write, Read, Fork, Clear }

    public sealed record Op(OpKind Kind, int Page, int Pages, int Other, byte Value);

    internal const int ArenaPages = 1024; // 4 MiB on x86_64: room for two THPs

    internal static readonly Gen<Op> OpGen =
        from kind in Gen.Frequency(
            (3, Gen.Constant(OpKind.Mmap)), (1, Gen.Constant(OpKind.MmapShared)), (2, Gen.Constant(OpKind.Munmap)),
            (2, Gen.Constant(OpKind.Mprotect)), (1, Gen.Constant(OpKind.MremapMove)), (1, Gen.Constant(OpKind.MremapGrow)),
            (1, Gen.Constant(OpKind.DontNeed)), (2, Gen.Constant(OpKind.PageOut)), (1, Gen.Constant(OpKind.PopulateRead)),
            (1, Gen.Constant(OpKind.PopulateWrite)), (1, Gen.Constant(OpKind.HugePage)), (10, Gen.Constant(OpKind.Write)),
            (3, Gen.Constant(OpKind.Read)), (1, Gen.Constant(OpKind.Fork)), (2, Gen.Constant(OpKind.Clear)))
        from page in Gen.Choose(0, ArenaPages - 1)
        from pages in Gen.Frequency((4, Gen.Choose(1, 16)), (1, Gen.Choose(256, 640)))
        from other in Gen.Choose(0, ArenaPages - 1)
        from value in Gen.Choose(1, 255)
        select new Op(kind, page, pages, other, (byte)value);

    private static Config Deterministic(ulong seed, int tests) =>
        Config.QuickThrowOnFailure.WithMaxTest(tests)
              .WithReplay(FSharpOption<Replay>.Some(new Replay(new Rnd(seed, 0x9E3779B97F4A7C15UL | 1), FSharpOption<int>.None)));

    /// <summary>Applies one operation; failures with an errno are fine (the kernel refused), crashes are not.</summary>
    internal static void Apply(Kernel k, SimTask t, ulong arena, Op op, Dictionary<(int, ulong), byte[]> snapshot)
    {
        ulong ps = (ulong)k.Arch.PageSize;
        ulong va = arena + (ulong)op.Page * ps;
        ulong len = (ulong)Math.Min(op.Pages, ArenaPages - op.Page) * ps;
        var rw = Prot.Read | Prot.Write;
        switch (op.Kind)
        {
            case OpKind.Mmap: t.Mmap(va, len, rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed); break;
            case OpKind.MmapShared: t.Mmap(va, len, rw, MapFlags.Shared | MapFlags.Anonymous | MapFlags.Fixed); break;
            case OpKind.Munmap: t.Munmap(va, len); break;
            case OpKind.Mprotect: t.Mprotect(va, len, op.Value % 2 == 0 ? Prot.Read : rw); break;
            case OpKind.MremapMove:
            {
                ulong dest = arena + (ulong)op.Other * ps;
                if (dest + len <= arena + ArenaPages * ps)
                    t.Mremap(va, len, len, MremapFlags.MayMove | MremapFlags.Fixed, dest);
                break;
            }
            case OpKind.MremapGrow: t.Mremap(va, ps, Math.Min(len, arena + ArenaPages * ps - va), 0); break;
            case OpKind.DontNeed: t.Madvise(va, len, Madvise.DontNeed); break;
            case OpKind.PageOut: t.Madvise(va, len, Madvise.PageOut); break;
            case OpKind.PopulateRead: t.Madvise(va, len, Madvise.PopulateRead); break;
            case OpKind.PopulateWrite: t.Madvise(va, len, Madvise.PopulateWrite); break;
            case OpKind.HugePage: t.Madvise(va, len, Madvise.HugePage); break;
            case OpKind.Write:
                if (t.Mm.Find(va) is { CanWrite: true })
                    t.Write(va + (ulong)(op.Value * 8 % (int)ps), [op.Value]).OrThrow("write");
                break;
            case OpKind.Read:
                if (t.Mm.Find(va) is { CanRead: true })
                    t.Read(va, new byte[1]).OrThrow("read");
                break;
            case OpKind.Fork:
            {
                var child = k.Fork(t);
                if (child.Mm.Find(va) is { CanWrite: true, IsShared: false })
                    child.Write(va, [op.Value]).OrThrow("child write");
                k.Exit(child, 0);
                k.Reap(child);
                break;
            }
            case OpKind.Clear:
                k.Proc.ClearRefs(t.Pid, "4").OrThrow("clear_refs");
                TakeSnapshot(k, t, arena, snapshot);
                break;
        }
    }

    private static void TakeSnapshot(Kernel k, SimTask t, ulong arena, Dictionary<(int, ulong), byte[]> snapshot)
    {
        snapshot.Clear();
        var page = new byte[k.Arch.PageSize];
        for (int i = 0; i < ArenaPages; i++)
        {
            ulong va = arena + (ulong)i * (ulong)k.Arch.PageSize;
            if (t.Mm.PeekPage(va, page))
                snapshot[(t.Pid, va)] = (byte[])page.Clone();
        }
    }

    /// <summary>Every present or swapped page of a private anonymous VMA whose bytes differ from the last clear reads soft-dirty.</summary>
    private static void CheckNoLostWrite(Kernel k, SimTask t, ulong arena, Dictionary<(int, ulong), byte[]> snapshot, string where)
    {
        var page = new byte[k.Arch.PageSize];
        var zero = new byte[k.Arch.PageSize];
        var entries = k.Proc.ReadPagemap(t.Pid, arena, ArenaPages);
        for (int i = 0; i < ArenaPages; i++)
        {
            ulong va = arena + (ulong)i * (ulong)k.Arch.PageSize;
            var v = t.Mm.Find(va);
            if (v is null || v.IsShared || !t.Mm.PeekPage(va, page))
                continue;
            var before = snapshot.GetValueOrDefault((t.Pid, va)) ?? zero;
            if (!page.AsSpan().SequenceEqual(before))
                Assert.True((entries[i] & PagemapBits.SoftDirty) != 0, $"{where}: page {va:x} changed since the last clear but reads clean ({entries[i]:x16})");
        }
    }

    /// <summary>For every page, the PAGEMAP_SCAN categories agree with the pagemap entry.</summary>
    private static void CheckScanAgreesWithPagemap(Kernel k, SimTask t, ulong arena, string where)
    {
        ulong ps = (ulong)k.Arch.PageSize;
        var entries = k.Proc.ReadPagemap(t.Pid, arena, ArenaPages);
        var vec = new PageRegion[ArenaPages];
        var a = PmScanArg.Create(arena, arena + ArenaPages * ps, ArenaPages, 0,
            PageCategory.Present | PageCategory.Swapped | PageCategory.SoftDirty | PageCategory.PfnZero | PageCategory.Guard,
            anyof: PageCategory.Present | PageCategory.Swapped | PageCategory.SoftDirty);
        long n = k.Proc.PagemapScan(t.Pid, ref a, vec).OrThrow("scan");
        var cats = new ulong[ArenaPages];
        for (int r = 0; r < n; r++)
            for (ulong va = vec[r].Start; va < vec[r].End; va += ps)
                cats[(va - arena) / ps] = vec[r].Categories;
        for (int i = 0; i < ArenaPages; i++)
        {
            ulong e = entries[i];
            ulong c = cats[i];
            string at = $"{where}: page {arena + (ulong)i * ps:x} entry {e:x16} categories {c:x}";
            Assert.True(((e & PagemapBits.Present) != 0) == ((c & PageCategory.Present) != 0), at);
            Assert.True(((e & PagemapBits.Swap) != 0) == ((c & PageCategory.Swapped) != 0), at);
            Assert.True(((e & PagemapBits.SoftDirty) != 0) == ((c & PageCategory.SoftDirty) != 0), at);
        }
    }

    private static void Run(ArchProfile arch, List<Op> ops, bool checkArm64)
    {
        var k = new Kernel(new KernelConfig { Arch = arch, MemoryBytes = 1L << 30, SwapBytes = 64L << 20 });
        var t = k.Spawn("prop");
        ulong ps = (ulong)k.Arch.PageSize;
        ulong arena = 0x200000000000UL;
        var snapshot = new Dictionary<(int, ulong), byte[]>();
        for (int step = 0; step < ops.Count; step++)
        {
            Apply(k, t, arena, ops[step], snapshot);
            Assert.True(t.Alive, $"step {step} {ops[step]} killed the task");
            string where = $"step {step} ({ops[step]})";
            if (checkArm64)
            {
                var entries = k.Proc.ReadPagemap(t.Pid, arena, ArenaPages);
                Assert.All(entries, e => Assert.Equal(0UL, e & PagemapBits.SoftDirty));
                continue;
            }
            CheckNoLostWrite(k, t, arena, snapshot, where);
            CheckScanAgreesWithPagemap(k, t, arena, where);
        }
        _ = ps;
    }

    [Fact]
    public void NoChangedPageEverReadsClean_AndScanAgreesWithPagemap_X86_64() =>
        Check.One(Deterministic(20261122, 60),
            Prop.ForAll(Gen.ListOf(OpGen, 40).Select(l => l.ToList()).ToArbitrary(), ops => Run(ArchProfile.X86_64, ops, checkArm64: false)));

    [Fact]
    public void NoChangedPageEverReadsClean_Ppc64() =>
        Check.One(Deterministic(7, 25),
            Prop.ForAll(Gen.ListOf(OpGen, 30).Select(l => l.ToList()).ToArbitrary(), ops => Run(ArchProfile.Ppc64, ops, checkArm64: false)));

    [Fact]
    public void Arm64NeverReportsBit55() =>
        Check.One(Deterministic(42, 30),
            Prop.ForAll(Gen.ListOf(OpGen, 40).Select(l => l.ToList()).ToArbitrary(), ops => Run(ArchProfile.Arm64, ops, checkArm64: true)));
}

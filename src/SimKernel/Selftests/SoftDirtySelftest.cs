using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Selftests;

/// <summary>
/// tools/testing/selftests/mm/soft-dirty.c (plan 19, with the 2025 "skip without sd" probe and the
/// sticky-merge test), re-expressed against the simulator. Check IDs D1–D19 number the
/// ksft results of the C program in order; the bracketed rule IDs in comments are the rule IDs
/// the SoftDirtyRuleTests name their tests after (S*, K*, C*, R*). Every soft-dirty read goes through vm_util's pagemap/PAGEMAP_SCAN
/// cross-check, so a disagreement between R1 and R2 aborts the run as it aborts the real binary.
/// </summary>
public sealed class SoftDirtySelftest : ISelftest
{
    /// <summary>The loop count of test_simple and test_hugepage.</summary>
    public const int TestIterations = 10000;

    public string Name => "soft-dirty";
    public string Description => "mm/soft-dirty.c: clear_refs 4, write faults, THP, mprotect (anon and shared file) and sticky VM_SOFTDIRTY merges (D1-D19).";

    /// <summary>The 19 TAP lines the real binary prints, in order.</summary>
    public static IReadOnlyList<(string Id, string Description)> Plan { get; } =
    [
        ("D1", "Test test_simple"),
        ("D2", "Test test_vma_reuse dirty bit of allocated page"),
        ("D3", "Test test_vma_reuse dirty bit of reused address page"),
        ("D4", "Test test_hugepage huge page allocation"),
        ("D5", "Test test_hugepage huge page dirty bit"),
        ("D6", "Test test_mprotect-anon dirty bit of new written page"),
        ("D7", "Test test_mprotect-anon soft-dirty clear after clear_refs"),
        ("D8", "Test test_mprotect-anon soft-dirty clear after marking RO"),
        ("D9", "Test test_mprotect-anon soft-dirty clear after marking RW"),
        ("D10", "Test test_mprotect-anon soft-dirty after rewritten"),
        ("D11", "Test test_mprotect-file dirty bit of new written page"),
        ("D12", "Test test_mprotect-file soft-dirty clear after clear_refs"),
        ("D13", "Test test_mprotect-file soft-dirty clear after marking RO"),
        ("D14", "Test test_mprotect-file soft-dirty clear after marking RW"),
        ("D15", "Test test_mprotect-file soft-dirty after rewritten"),
        ("D16", "Test test_merge-anon soft-dirty after remap merge 1st pg"),
        ("D17", "Test test_merge-anon soft-dirty after remap merge 2nd pg"),
        ("D18", "Test test_merge-anon soft-dirty after mprotect merge 1st pg"),
        ("D19", "Test test_merge-anon soft-dirty after mprotect merge 2nd pg"),
    ];

    private static string Desc(string id) => Plan.First(p => p.Id == id).Description;

    public SelftestReport Run(KernelConfig config)
    {
        var t = new SelftestContext(config, "soft-dirty");
        // main(): no "sd" in the VmFlags of a fresh anonymous mapping means the kernel cannot track
        // soft-dirty (arm64, or CONFIG_MEM_SOFT_DIRTY off, or a kernel without VM_SOFTDIRTY) → the
        // whole file is skipped before any result [R3]: a kernel without CONFIG_MEM_SOFT_DIRTY never sets bit 55.
        bool supported = false;
        t.RunBody(() => supported = t.SoftdirtySupported());
        if (t.Checks.Count > 0)
            return t.Report(Name);
        if (!supported)
        {
            t.SkipAll(Plan, $"soft-dirty is not supported: no 'sd' in smaps VmFlags ({t.Kernel.Arch.Name}, kernel {t.Kernel.Version.Name})");
            return t.Report(Name);
        }
        t.RunBody(() =>
        {
            _ = t.PagemapFd;
            TestSimple(t);
            TestVmaReuse(t);
            TestHugepage(t);
            TestMprotect(t, anon: true);
            TestMprotect(t, anon: false);
            TestMerge(t);
        });
        return t.Report(Name);
    }

    private static bool SoftDirty(SelftestContext t, ulong va) => t.PagemapIsSoftDirtyChecked(va);

    /// <summary>
    /// The loop shared by test_simple and test_hugepage: after a clear the page must read clean
    /// (C1a/C1b), and after <c>map[0]++</c> it must read dirty (S3–S5, S9). Returns the iterations done.
    /// </summary>
    private static int DirtyCleanLoop(SelftestContext t, ulong map, out string? detail)
    {
        detail = null;
        t.ClearSoftDirty();
        int i;
        for (i = 0; i < TestIterations; i++)
        {
            if (SoftDirty(t, map))
            {
                detail = $"dirty bit was 1, but should be 0 (i={i})";
                break;
            }
            t.ClearSoftDirty();
            t.WriteByte(map, (byte)(t.ReadByte(map) + 1));
            if (!SoftDirty(t, map))
            {
                detail = $"dirty bit was 0, but should be 1 (i={i})";
                break;
            }
            t.ClearSoftDirty();
        }
        return i;
    }

    /// <summary>D1: one heap page through 10000 clear/write cycles.</summary>
    private static void TestSimple(SelftestContext t)
    {
        ulong ps = (ulong)t.PageSize;
        ulong map = t.AlignedAlloc(ps, ps);
        if (map == 0)
            SelftestContext.Fatal("aligned_alloc failed");
        // The heap was grown (and so marked, S10.3) before the first clear; the loop allocates
        // nothing, so no brk growth can re-mark the heap VMA between a clear and a read.
        int done = DirtyCleanLoop(t, map, out string? why);
        t.Check("D1", Desc("D1"), done == TestIterations, why);
        t.Free(map);
    }

    /// <summary>D2, D3: a fresh VMA reads dirty on an untouched page, also when it reuses an address (S10.1).</summary>
    private static void TestVmaReuse(SelftestContext t)
    {
        ulong ps = (ulong)t.PageSize;
        ulong map = t.Mmap(ps, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        if (map == SelftestContext.MapFailed)
            SelftestContext.Fatal("mmap failed");
        // Never touched: only the VMA flag of a new mapping can make it dirty [S10.1, R1].
        bool d = SoftDirty(t, map);
        t.Check("D2", Desc("D2"), d, "untouched page of a new mapping reads clean");
        t.ClearSoftDirty();
        t.Self.Munmap(map, ps);

        ulong map2 = t.Mmap(ps, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        if (map2 == SelftestContext.MapFailed)
            SelftestContext.Fatal("mmap failed");
        if (map2 == map)
            t.Check("D3", Desc("D3"), SoftDirty(t, map2), "new VMA at a reused address reads clean");
        else
            t.Skip("D3", Desc("D3"), $"mmap returned {map2:x}, not the reused address {map:x}");
        t.Self.Munmap(map2, ps);
    }

    /// <summary>D4, D5: a PMD-mapped THP is cleared as a whole and re-marked as a whole by one write (C1b, S9).</summary>
    private static void TestHugepage(SelftestContext t)
    {
        if (!t.ThpEnabled)
        {
            t.Skip("D4", Desc("D4"), "Transparent Hugepages not available");
            t.Skip("D5", Desc("D5"), "Transparent Hugepages not available");
            return;
        }
        ulong hpage = t.HugePageSize;
        ulong map = t.AlignedAlloc(hpage, hpage);
        if (map == 0)
            SelftestContext.Fatal("memalign failed");
        if (!t.Self.Madvise(map, hpage, Madvise.HugePage).Ok)
            SelftestContext.Fatal("madvise(MADV_HUGEPAGE) failed");
        var pattern = new byte[hpage];
        for (ulong i = 0; i < hpage; i++)
            pattern[i] = (byte)i;
        t.Self.Write(map, pattern).OrThrow("fill huge page");

        if (t.CheckHugeAnon(map, 1, hpage))
        {
            t.Check("D4", Desc("D4"), true);
            int done = DirtyCleanLoop(t, map, out string? why);
            t.Check("D5", Desc("D5"), done == TestIterations, why);
        }
        else
        {
            t.Skip("D4", Desc("D4"), "no THP backs the block (AnonHugePages is not one huge page)");
            t.Skip("D5", Desc("D5"), "no THP backs the block");
        }
        t.Free(map);
    }

    /// <summary>
    /// D6–D10 (anonymous) and D11–D15 (shared file): mprotect keeps the soft-dirty bit and must not
    /// make a clean entry writable while tracking is armed, so the rewrite faults again (K3, S5).
    /// </summary>
    private static void TestMprotect(SelftestContext t, bool anon)
    {
        ulong ps = (ulong)t.PageSize;
        string[] ids = anon ? ["D6", "D7", "D8", "D9", "D10"] : ["D11", "D12", "D13", "D14", "D15"];
        ulong map;
        if (anon)
            map = t.Mmap(ps, Prot.Read | Prot.Write, MapFlags.Anonymous | MapFlags.Private);
        else
        {
            // open("./soft-dirty-test-file", O_RDWR|O_CREAT), unlink, ftruncate(4096), mmap MAP_SHARED:
            // a page-cache page of a regular file [S6, C1a write-notify].
            var file = t.CreateFile("/tmp/soft-dirty-test-file", new byte[ps]);
            map = t.Mmap(ps, Prot.Read | Prot.Write, MapFlags.Shared, file: file);
        }
        if (map == SelftestContext.MapFailed)
            SelftestContext.Fatal("mmap failed");

        t.WriteByte(map, 1);
        t.Check(ids[0], Desc(ids[0]), SoftDirty(t, map), "written page reads clean");
        t.ClearSoftDirty();
        t.Check(ids[1], Desc(ids[1]), !SoftDirty(t, map), "page still dirty after clear_refs 4");
        t.Self.Mprotect(map, ps, Prot.Read).OrThrow("mprotect RO");
        t.Check(ids[2], Desc(ids[2]), !SoftDirty(t, map), "mprotect(PROT_READ) made the page dirty");
        t.Self.Mprotect(map, ps, Prot.Read | Prot.Write).OrThrow("mprotect RW");
        t.Check(ids[3], Desc(ids[3]), !SoftDirty(t, map), "mprotect(PROT_READ|PROT_WRITE) made the page dirty");
        long faults = t.Self.Mm.WpFaults;
        t.WriteByte(map, 2);
        t.Check(ids[4], Desc(ids[4]), SoftDirty(t, map),
            t.Self.Mm.WpFaults == faults ? "the rewrite did not fault: mprotect left the clean PTE writable" : "rewritten page reads clean");
        t.Self.Munmap(map, ps);
    }

    /// <summary>
    /// D16–D19: a flagged VMA merged into a cleared neighbour, by mremap and by mprotect. The merged
    /// VMA must keep VM_SOFTDIRTY (sticky merge, S10.5; 6.19 and 6.18.y). Kernels before the change keep
    /// the surviving VMA's flags and lose it (FN1), so these four fail on the linux-6.12 profile.
    /// </summary>
    private static void TestMerge(SelftestContext t)
    {
        ulong ps = (ulong)t.PageSize;
        const MapFlags fixedAnon = MapFlags.Anonymous | MapFlags.Private | MapFlags.Fixed;
        ulong reserved = t.Mmap(5 * ps, Prot.None, MapFlags.Anonymous | MapFlags.Private);
        if (reserved == SelftestContext.MapFailed)
            SelftestContext.Fatal("mmap failed");
        // r4 stays mapped PROT_NONE as a barrier; r0..r3 become a hole to place VMAs in.
        t.Self.Munmap(reserved, 4 * ps).OrThrow("munmap");
        ulong r1 = reserved + ps, r2 = reserved + 2 * ps, r3 = reserved + 3 * ps;

        // Part A: merge by mremap. No PTEs exist, so only the VMA flag can carry "dirty" (S8 does not apply).
        ulong map = t.Mmap(ps, Prot.Read | Prot.Write, fixedAnon, r1);
        if (map == SelftestContext.MapFailed)
            SelftestContext.Fatal("mmap failed");
        t.ClearSoftDirty();
        ulong map2 = t.Mmap(ps, Prot.Read | Prot.Write, fixedAnon, r3);
        if (map2 == SelftestContext.MapFailed)
            SelftestContext.Fatal("mmap failed");
        var mr = t.Self.Mremap(map2, ps, ps, MremapFlags.Fixed | MremapFlags.MayMove, r2);
        if (!mr.Ok)
            SelftestContext.Fatal($"mremap failed: {mr.Error}");
        t.Check("D16", Desc("D16"), SoftDirty(t, r1), "merged VMA lost VM_SOFTDIRTY (FN1: merge is not sticky)");
        t.Check("D17", Desc("D17"), SoftDirty(t, r2), "merged VMA lost VM_SOFTDIRTY (FN1: merge is not sticky)");
        t.Self.Munmap(r1, 2 * ps).OrThrow("munmap");

        // Part B: merge by mprotect (A' becomes RWX like its flagged neighbour C).
        map = t.Mmap(ps, Prot.Read | Prot.Write, fixedAnon, r1);
        if (map == SelftestContext.MapFailed)
            SelftestContext.Fatal("mmap failed");
        t.ClearSoftDirty();
        map2 = t.Mmap(ps, Prot.Read | Prot.Write | Prot.Exec, fixedAnon, r2);
        if (map2 == SelftestContext.MapFailed)
            SelftestContext.Fatal("mmap failed");
        if (!t.Self.Mprotect(map, ps, Prot.Read | Prot.Write | Prot.Exec).Ok)
            SelftestContext.Fatal("mprotect failed");
        t.Check("D18", Desc("D18"), SoftDirty(t, r1), "merged VMA lost VM_SOFTDIRTY (FN1: merge is not sticky)");
        t.Check("D19", Desc("D19"), SoftDirty(t, r2), "merged VMA lost VM_SOFTDIRTY (FN1: merge is not sticky)");
        t.Self.Munmap(r1, 2 * ps).OrThrow("munmap");
    }
}

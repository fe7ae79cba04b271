using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.KernelApi;

namespace CriuSharp.HostKernel.Tests;

/// <summary>
/// pre-dump and dump of real processes through the Dumper on <see cref="LinuxHost"/>: the images
/// must hold exactly the process's memory, read here independently through /proc/PID/mem.
/// </summary>
public sealed class HostDumpTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("criu-sharp-hostdump-").FullName;
    private readonly LinuxHost _host = new();

    public void Dispose()
    {
        _host.Dispose();
        Directory.Delete(_root, true);
    }

    private string Dir(string name) => Path.Combine(_root, name);

    private DumpResult PreDump(int pid, string name, string? prev = null, TrackerKind tracker = TrackerKind.Content) =>
        Criu.PreDump(_host, new DumpOptions { Pid = pid, ImagesDir = Dir(name), PrevImagesDir = prev is null ? null : $"../{prev}", Tracker = tracker, AutoFallback = TrackerKind.Content, StrictTracker = true });

    private DumpResult Dump(int pid, string name, string? prev = null) =>
        Criu.Dump(_host, new DumpOptions { Pid = pid, ImagesDir = Dir(name), PrevImagesDir = prev is null ? null : $"../{prev}", Tracker = TrackerKind.Content, LeaveRunning = true, TrackMem = true, AutoFallback = TrackerKind.Content, StrictTracker = true });

    /// <summary>Every page the chain at <paramref name="name"/> holds equals the process's memory now.</summary>
    private static int AssertChainEqualsMemory(string dir, RealChild c, ulong from = 0, ulong to = ulong.MaxValue)
    {
        var set = ImageSet.Open(dir);
        using var reader = set.OpenPageReader(c.Pid);
        int pages = 0;
        var img = new byte[4096];
        foreach (var e in reader.Pagemap.Entries)
        {
            ulong n = PagemapImage.NrPages(e);
            for (ulong i = 0; i < n; i++)
            {
                ulong va = e.Vaddr + (i << 12);
                if (va < from || va >= to)
                    continue;
                reader.Read(va, img);
                var mem = c.ReadMem(va, 4096);
                if (!mem.AsSpan().SequenceEqual(img))
                {
                    int first = mem.AsSpan().CommonPrefixLength(img);
                    string vma = File.ReadAllLines($"/proc/{c.Pid}/maps").FirstOrDefault(l => InRange(l, va)) ?? "?";
                    Assert.Fail($"page 0x{va:x} of the chain differs from the process's memory from byte {first} ({vma})");
                }
                pages++;
            }
        }
        return pages;
    }

    private static bool InRange(string mapsLine, ulong va)
    {
        var range = mapsLine.Split(' ')[0].Split('-');
        return Convert.ToUInt64(range[0], 16) <= va && va < Convert.ToUInt64(range[1], 16);
    }

    /// <summary>Addresses of the pages stored (PE_PRESENT) by the image set itself.</summary>
    private static HashSet<ulong> Stored(string dir, int pid)
    {
        var s = new HashSet<ulong>();
        foreach (var e in ImageSet.Open(dir).ReadPagemap(pid).Entries)
            if ((PagemapImage.FlagsOf(e) & PagemapFlags.Present) != 0)
                for (ulong i = 0; i < PagemapImage.NrPages(e); i++)
                    s.Add(e.Vaddr + (i << 12));
        return s;
    }

    [Fact]
    public void CProgram_PreDumpsAndDump_ChainEqualsMemory_ProcessUnharmed()
    {
        using var c = RealChild.Start(Programs.MemTouch, "256");
        ulong a = Programs.ParseReady(c.ReadLine());
        string sum0 = c.Ask("sum");
        var r1 = PreDump(c.Pid, "1");
        Assert.Equal(TrackerKind.Content, r1.Tracker);
        c.Ask("fill 0 10 5 1");
        c.Ask("same 0 30 4");
        string sum1 = c.Ask("sum");
        var r2 = PreDump(c.Pid, "2", "1");
        // Exactly the five changed pages of the region; the rewritten-but-equal ones stay in the parent.
        var stored = Stored(Dir("2"), c.Pid);
        var inRegion = stored.Where(v => v >= a && v < a + 256 * 4096UL).Order().ToList();
        Assert.Equal(Enumerable.Range(10, 5).Select(p => a + (ulong)p * 4096), inRegion);
        Assert.True(r2.Stats.PagesWritten < r1.Stats.PagesWritten / 10);
        c.Ask("fill 0 100 3 2");
        string sum2 = c.Ask("sum");
        Dump(c.Pid, "3", "2");
        Assert.True(AssertChainEqualsMemory(Dir("3"), c) >= 256);
        // The process runs on, and its own view of its memory is what it was before each dump.
        Assert.Equal(sum2, c.Ask("sum"));
        Assert.NotEqual(sum0, sum1);
        Assert.True(c.Alive);
        Assert.DoesNotContain("error", c.Output);
    }

    [Fact]
    public void DumpWithoutParent_RecordsEveryPagesDigest_SoTheNextPreDumpWritesOnlyChanges()
    {
        using var c = RealChild.Start(Programs.MemTouch, "256");
        ulong a = Programs.ParseReady(c.ReadLine());
        c.Ask("fill 0 0 256 3");
        // With no parent, the page store's workers read, digest and compress the pages; the
        // digests recorded must be those a pre-dump computes from its own reads.
        Criu.Dump(_host, new DumpOptions { Pid = c.Pid, ImagesDir = Dir("1"), Tracker = TrackerKind.Content, LeaveRunning = true, TrackMem = true, PageStore = PageStoreOptions.Lz4() with { Parallelism = 2 } });
        PreDump(c.Pid, "p");
        var dumped = ImageSet.Open(Dir("1")).ReadPageDigests(c.Pid)!;
        var read = ImageSet.Open(Dir("p")).ReadPageDigests(c.Pid)!;
        for (int p = 0; p < 256; p++)
        {
            ulong va = a + (ulong)p * 4096;
            Assert.True(read.TryGet(va, out ulong want) && want != 0, $"page 0x{va:x} has no digest in the pre-dump");
            Assert.True(dumped.TryGet(va, out ulong got), $"page 0x{va:x} has no digest in the dump");
            Assert.Equal(want, got);
        }
        c.Ask("fill 0 10 5 1");
        PreDump(c.Pid, "2", "1");
        var inRegion = Stored(Dir("2"), c.Pid).Where(v => v >= a && v < a + 256 * 4096UL).Order().ToList();
        Assert.Equal(Enumerable.Range(10, 5).Select(p => a + (ulong)p * 4096), inRegion);
        Assert.True(AssertChainEqualsMemory(Dir("2"), c, a, a + 256 * 4096UL) == 256);
    }

    [Fact]
    public void DumpOfAVmaLargerThanAWalkWindow_HoldsEveryPageAndDigest()
    {
        // 20,000 pages (78 MiB): walked in 64 MiB windows while the store's workers fetch.
        using var c = RealChild.Start(Programs.MemTouch, "8");
        Programs.ParseReady(c.ReadLine());
        var ok = c.Ask("map 1 20000").Split(' ');
        ulong a = Convert.ToUInt64(ok[3], 16);
        const ulong Bytes = 20000UL * 4096;
        Criu.Dump(_host, new DumpOptions { Pid = c.Pid, ImagesDir = Dir("1"), Tracker = TrackerKind.Content, LeaveRunning = true, PageStore = PageStoreOptions.Lz4() with { Parallelism = 2 } });
        Assert.Equal(20000, AssertChainEqualsMemory(Dir("1"), c, a, a + Bytes));
        var digests = ImageSet.Open(Dir("1")).ReadPageDigests(c.Pid)!;
        foreach (ulong off in new ulong[] { 0, (64UL << 20) - 4096, 64UL << 20, Bytes - 4096 })
        {
            Assert.True(digests.TryGet(a + off, out ulong d));
            Assert.Equal(PageDigest.Of(a + off, c.ReadMem(a + off, 4096)), d);
        }
        Assert.Equal("ok sum", c.Ask("sum")[..6]);
    }

    [Fact]
    public void PreDumpOfAVmaWalkedInParts_HoldsEveryPageOnce()
    {
        // 76,800 pages (300 MiB): PAGEMAP_SCAN walks it in one part per core, joined in order.
        using var c = RealChild.Start(Programs.MemTouch, "8");
        Programs.ParseReady(c.ReadLine());
        ulong a = Convert.ToUInt64(c.Ask("map 1 76800").Split(' ')[3], 16);
        const ulong Bytes = 76800UL * 4096;
        PreDump(c.Pid, "1");
        Assert.Equal(76800, AssertChainEqualsMemory(Dir("1"), c, a, a + Bytes));
        var inRegion = ImageSet.Open(Dir("1")).ReadPagemap(c.Pid).Entries.Where(e => e.Vaddr >= a && e.Vaddr < a + Bytes).ToList();
        Assert.Equal(a, inRegion[0].Vaddr);
        Assert.Equal(76800UL, (ulong)inRegion.Sum(e => (long)PagemapImage.NrPages(e)));
    }

    [Fact]
    public void EveryStoredPage_DiffersFromTheParent()
    {
        using var c = RealChild.Start(Programs.MemTouch, "64");
        Programs.ParseReady(c.ReadLine());
        PreDump(c.Pid, "1");
        c.Ask("fill 0 3 2 7");
        c.Ask("same 0 40 10");
        PreDump(c.Pid, "2", "1");
        var parent = ImageSet.Open(Dir("1"));
        using var pr = parent.OpenPageReader(c.Pid);
        using var cr = ImageSet.Open(Dir("2")).OpenPageReader(c.Pid);
        var before = new byte[4096];
        var now = new byte[4096];
        foreach (ulong va in Stored(Dir("2"), c.Pid))
        {
            if (pr.Locate(va) == PageLocation.Absent)
                continue; // new since the parent
            pr.Read(va, before);
            cr.Read(va, now);
            string vma = File.ReadAllLines($"/proc/{c.Pid}/maps").FirstOrDefault(l => InRange(l, va)) ?? "?";
            if (vma.EndsWith("[vdso]", StringComparison.Ordinal))
                continue; // CRIU dumps the vDSO whole every time
            Assert.False(before.AsSpan().SequenceEqual(now), $"page 0x{va:x} was written although it did not change ({vma})");
        }
    }

    [Fact]
    public void MapUnmapAndHeapGrowth_AreFollowed()
    {
        using var c = RealChild.Start(Programs.MemTouch, "32");
        Programs.ParseReady(c.ReadLine());
        PreDump(c.Pid, "1");
        var map = c.Ask("map 1 16").Split(' ');
        ulong m = Convert.ToUInt64(map[3], 16);
        c.Ask("brk 8");
        PreDump(c.Pid, "2", "1");
        Assert.Contains(m, Stored(Dir("2"), c.Pid));
        c.Ask("unmap 1");
        c.Ask("brk 4");
        c.Ask("fill 0 0 1 3");
        PreDump(c.Pid, "3", "2");
        Dump(c.Pid, "4", "3");
        AssertChainEqualsMemory(Dir("4"), c);
        var mm = ImageSet.Open(Dir("4")).ReadMm(c.Pid);
        Assert.DoesNotContain(mm.Vmas, v => v.Start <= m && m < v.End);
        // The dumped layout is the process's layout.
        var maps = File.ReadAllLines($"/proc/{c.Pid}/maps")
            .Where(l => !l.EndsWith("[vsyscall]", StringComparison.Ordinal))
            .Select(l => l.Split(' ')[0]).ToList();
        var dumped = mm.Vmas.Where(v => v.Start < 0xffffffffff600000UL).Select(v => $"{v.Start:x}-{v.End:x}").ToList();
        Assert.Equal(maps, dumped);
    }

    [Fact]
    public void Python_PreDumpsFollowItsWrites()
    {
        using var c = RealChild.Start(Programs.Python, Programs.MemTouchPy, "64");
        ulong a = Programs.ParseReady(c.ReadLine());
        PreDump(c.Pid, "1");
        c.Ask("fill 0 5 3 9");
        PreDump(c.Pid, "2", "1");
        var stored = Stored(Dir("2"), c.Pid).Where(v => v >= a && v < a + 64 * 4096UL).Order().ToList();
        Assert.Equal(Enumerable.Range(5, 3).Select(p => a + (ulong)p * 4096), stored);
        string sum = c.Ask("sum");
        Dump(c.Pid, "3", "2");
        // The interpreter's own heap may change while it waits for input (seen once in ~20 runs
        // on a 2-byte-offset word of a small anonymous mapping), so only the pages it was told
        // to write are compared here; the C and sqlite3 tests compare the whole process.
        Assert.Equal(64, AssertChainEqualsMemory(Dir("3"), c, a, a + 64 * 4096UL));
        Assert.Equal(sum, c.Ask("sum"));
    }

    [Fact]
    public void Sqlite_ChainEqualsMemory_AndItsOutputIsUnchanged()
    {
        using var c = RealChild.Start("sqlite3", "-batch", ":memory:");
        Assert.Equal("1", c.Ask("create table t(x); select 1;"));
        PreDump(c.Pid, "1");
        Assert.Equal("500", c.Ask("insert into t select value from generate_series(1, 500); select count(*) from t;"));
        PreDump(c.Pid, "2", "1");
        Assert.Equal("125250", c.Ask("select sum(x) from t;"));
        Dump(c.Pid, "3", "2");
        AssertChainEqualsMemory(Dir("3"), c);
        Assert.Equal("125250", c.Ask("select sum(x) from t;"));
        Assert.Equal("1\n500\n125250\n125250\n", c.Output);
    }

    [Fact]
    public void ExplicitTrackerTheKernelLacks_IsRefused()
    {
        using var c = RealChild.Start(Programs.MemTouch, "4");
        Programs.ParseReady(c.ReadLine());
        var want = _host.Capabilities.MemDirtyTrack ? TrackerKind.UffdWp : TrackerKind.SoftDirty;
        var e = Assert.Throws<DumperException>(() => PreDump(c.Pid, "1", tracker: want));
        Assert.Equal(DumperErrorKind.Unsupported, e.Kind);
        Assert.True(c.Alive);
    }
}

/// <summary>Failures on the real host: one clear error, images never marked complete, the process untouched.</summary>
public sealed class HostDumpFailureTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("criu-sharp-hostfail-").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    [Fact]
    public void ProcessExitingMidDump_FailsWithEsrch_AndLeavesTheImagesIncomplete()
    {
        var c = RealChild.Start(Programs.MemTouch, "64");
        try
        {
            Programs.ParseReady(c.ReadLine());
            using var host = new LinuxHost();
            bool killed = false;
            host.BeforeRead = pid =>
            {
                if (killed || pid != c.Pid) return;
                killed = true;
                c.Dispose(); // SIGKILL: a traced or frozen task dies at once
                for (int i = 0; i < 2000 && RealChild.State(pid) is not ('Z' or '\0'); i++)
                    Thread.Sleep(1);
            };
            string dir = Path.Combine(_root, "d");
            var e = Assert.ThrowsAny<Exception>(() => Criu.Dump(host, new DumpOptions { Pid = c.Pid, ImagesDir = dir, LeaveRunning = true, Tracker = TrackerKind.Content }));
            Exception? x = e;
            while (x is not null and not KernelException)
                x = x.InnerException;
            Assert.Equal(Errno.ESRCH, Assert.IsType<KernelException>(x).Errno);
            Assert.True(File.Exists(Path.Combine(dir, ImageNames.IncompleteMarker)));
            Assert.Throws<ImageFormatException>(() => ImageSet.Open(dir).ReadInventory());
        }
        finally
        {
            c.Dispose();
        }
    }
}

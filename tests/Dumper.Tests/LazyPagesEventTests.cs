using CriuSharp.KernelApi;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// A lazy restore whose task munmaps, mremaps or MADV_DONTNEEDs lazy memory before the daemon
/// brought it in: the daemon follows UFFD_EVENT_UNMAP/REMAP/REMOVE as criu/uffd.c does
/// (handle_remove, handle_remap), so no page lands where the task changed its memory, a moved page
/// is fetched by its dump address, and the end-of-drain check fails only for pages that arrived wrong.
/// </summary>
public class LazyPagesEventTests
{
    private sealed record Setup(Kernel Dest, IKernel Api, LazyPageStore Store, LazyTask Task, LazyPagesDaemon Daemon, ulong Arena, ulong Other, string Dir, int Ps) : IDisposable
    {
        public SimTask T => Dest.GetTask(100);
        public void Dispose()
        {
            Daemon.Dispose();
            Directory.Delete(Dir, true);
        }
    }

    /// <summary>
    /// A 64-page arena, 48 pages written, and a separate 16-page VMA, all written (all lazy), dumped
    /// lazily and restored lazily with the daemon attached.
    /// </summary>
    private static Setup Restored(string tag, Func<LazyPageStore, ILazyPageSource>? source = null)
    {
        var k = RoundTrip.NewKernel();
        var t = Procs.Rich(k, 100);
        ulong arena = Procs.Map(t, 64);
        Procs.Fill(t, arena, 48, 5);
        // Executable too, so it never merges with the arena: a VMA checksum of its own.
        ulong other = Procs.Map(t, 16, prot: Prot.Read | Prot.Write | Prot.Exec);
        Procs.Fill(t, other, 16, 6);
        string dir = RoundTrip.NewDir(tag);
        var store = new LazyPageStore();
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = dir, LazyPages = store });
        var dest = new Kernel(k.Config);
        foreach (var f in k.Fs.Files.Where(f => !f.IsShmem && !f.Path.StartsWith("/usr/bin/", StringComparison.Ordinal)))
        {
            var data = new byte[f.Size];
            k.Fs.Read(f, 0, data);
            dest.Fs.Create(f.Path, data);
        }
        var api = new ClockOnlyHost(dest).AsKernelApi();
        var rr = Criu.Restore(api, new RestoreOptions { ImagesDir = dir, LazyPages = true });
        var lt = Assert.Single(rr.Lazy);
        var daemon = new LazyPagesDaemon(api, source?.Invoke(store) ?? new StoreLazyPageSource(store), rr.Lazy, new LazyLinkModel(100_000, 1e9));
        return new Setup(dest, api, store, lt, daemon, arena, other, dir, k.Arch.PageSize);
    }

    /// <summary>What the source held at <paramref name="va"/> (the dump's copy, read without counting as served).</summary>
    private static byte[] SourcePage(Setup s, ulong va)
    {
        var b = new byte[s.Ps];
        long served = s.Store.PagesServed;
        Assert.True(s.Store.TryGet(100, va, b));
        Assert.Equal(served + 1, s.Store.PagesServed);
        return b;
    }

    private static byte[] TaskPage(Setup s, ulong va)
    {
        var b = new byte[s.Ps];
        s.T.Read(va, b).OrThrow("read");
        return b;
    }

    private static void DrainAll(Setup s)
    {
        while (!s.Daemon.Complete)
            Assert.True(s.Daemon.Drain(64 << 10) > 0 || s.Daemon.Complete);
    }

    [Fact]
    public void Restorer_AsksForTheNonCooperativeEvents()
    {
        using var s = Restored("lazy-ev-api");
        var u = Assert.IsType<SimKernel.Uffd.Userfaultfd>(s.Task.Uffd);
        Assert.Equal(LazyPagesDaemon.WantedFeatures, u.Features & LazyPagesDaemon.WantedFeatures);
    }

    [Fact]
    public void Munmap_OfLazyPages_DropsThem_NothingIsCopiedThere_AndTheRestVerifies()
    {
        using var s = Restored("lazy-ev-unmap");
        ulong gone = s.Arena + 8 * (ulong)s.Ps;
        s.T.Munmap(gone, 8 * (ulong)s.Ps).OrThrow("munmap");
        DrainAll(s);
        var st = s.Daemon.Stats;
        Assert.Null(s.Daemon.VerifyError);
        Assert.Equal(8, st.PagesDropped);
        Assert.Equal(1, st.Events);
        Assert.Equal(s.Store.Pages - 8, st.PagesByFault + st.PagesByDrain);
        Assert.Equal(s.Store.Pages - 8, s.Store.PagesServed); // the dropped pages were never fetched
        Assert.Equal(1, s.Daemon.VmasChangedByTask);
        Assert.Equal(s.Task.Checks.Count - 1, s.Daemon.VmasVerified);
        Assert.DoesNotContain(s.T.MappedRanges, r => r.Start < gone + 8 * (ulong)s.Ps && gone < r.End);
        Assert.Equal(SourcePage(s, s.Arena + 20 * (ulong)s.Ps), TaskPage(s, s.Arena + 20 * (ulong)s.Ps));
    }

    [Fact]
    public void DontNeed_OfLazyPages_LeavesZeroPages_ThatAreNeverFetched()
    {
        using var s = Restored("lazy-ev-dontneed");
        ulong at = s.Arena + 4 * (ulong)s.Ps;
        s.T.Madvise(at, 4 * (ulong)s.Ps, Madvise.DontNeed).OrThrow("madvise");
        // MADV_DONTNEED of private anonymous memory: the next read sees zeros, not the source's page.
        Assert.All(TaskPage(s, at + (ulong)s.Ps), b => Assert.Equal(0, b));
        DrainAll(s);
        Assert.All(TaskPage(s, at), b => Assert.Equal(0, b));
        Assert.All(TaskPage(s, at + 3 * (ulong)s.Ps), b => Assert.Equal(0, b));
        Assert.Null(s.Daemon.VerifyError);
        Assert.Equal(4, s.Daemon.Stats.PagesDropped);
        Assert.Equal(s.Store.Pages - 4, s.Store.PagesServed);
        Assert.Equal(SourcePage(s, at + 4 * (ulong)s.Ps), TaskPage(s, at + 4 * (ulong)s.Ps));
    }

    [Fact]
    public void Mremap_OfLazyPages_FetchesThemByTheirDumpAddress_ForTheNewOne_AndEveryVmaVerifies()
    {
        using var s = Restored("lazy-ev-mremap");
        ulong from = s.Arena + 16 * (ulong)s.Ps, len = 8 * (ulong)s.Ps;
        ulong free = (ulong)s.T.Mmap(0, len, Prot.Read, MapFlags.Private | MapFlags.Anonymous).OrThrow("mmap");
        s.T.Munmap(free, len).OrThrow("munmap");
        ulong to = (ulong)s.T.Mremap(from, len, len, MremapFlags.MayMove | MremapFlags.Fixed, free).OrThrow("mremap");
        // A fault at the new address is served with the page dumped at the old one.
        Assert.Equal(SourcePage(s, from + (ulong)s.Ps), TaskPage(s, to + (ulong)s.Ps));
        DrainAll(s);
        var st = s.Daemon.Stats;
        Assert.Null(s.Daemon.VerifyError);
        Assert.Equal(8, st.PagesRemapped);
        Assert.Equal(0, st.PagesDropped);
        Assert.Equal(0, s.Daemon.VmasChangedByTask);
        Assert.Equal(s.Task.Checks.Count, s.Daemon.VmasVerified);
        for (ulong i = 0; i < 8; i++)
            Assert.Equal(SourcePage(s, from + i * (ulong)s.Ps), TaskPage(s, to + i * (ulong)s.Ps));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void APageThatArrivesWrong_StillFailsTheCheck_WhenTheTaskChangedOtherMemory(bool moveIt)
    {
        ulong bad = 0;
        using var s = Restored("lazy-ev-wrong", store => new CorruptingSource(store, () => bad));
        bad = s.Other + 5 * (ulong)s.Ps + 17;
        s.T.Munmap(s.Arena, 2 * (ulong)s.Ps).OrThrow("munmap");
        if (moveIt)
            s.T.Mremap(s.Other, 16 * (ulong)s.Ps, 16 * (ulong)s.Ps, MremapFlags.MayMove | MremapFlags.Fixed, s.Arena - 256 * (ulong)s.Ps).OrThrow("mremap");
        DrainAll(s);
        Assert.NotNull(s.Daemon.VerifyError);
        Assert.Contains($"0x{s.Other:x}", s.Daemon.VerifyError);
        Assert.Equal(1, s.Daemon.VmasChangedByTask); // the arena: not compared, but not failed either
    }

    /// <summary>A source that damages one byte (at a dump address) on the way.</summary>
    private sealed class CorruptingSource(LazyPageStore store, Func<ulong> bad) : ILazyPageSource
    {
        public bool TryGet(int pid, ulong va, Span<byte> dest)
        {
            if (!store.TryGet(pid, va, dest))
                return false;
            ulong b = bad();
            if (b >= va && b < va + (ulong)dest.Length)
                dest[(int)(b - va)] ^= 0xFF;
            return true;
        }
    }
}

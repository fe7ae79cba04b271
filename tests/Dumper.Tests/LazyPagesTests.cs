using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// dump --lazy-pages and a lazy restore served by the lazy-pages daemon (criu/uffd.c): PE_LAZY
/// entries without bytes (criu/page-xfer.c ppb_xfer_flags), missing-mode registration, faults and
/// the drain, and a source lost half-way.
/// </summary>
public class LazyPagesTests
{
    private static (Kernel Src, string Dir, LazyPageStore Store, List<TaskSnapshot> Expected) LazyDump(string tag)
    {
        var k = RoundTrip.NewKernel();
        var host = new ClockOnlyHost(k);
        var t = Procs.Rich(k, 100);
        ulong a = Procs.Map(t, 64);
        Procs.Fill(t, a, 48, 5);
        var expected = RoundTrip.Snapshot(k, 100);
        string dir = RoundTrip.NewDir(tag);
        var store = new LazyPageStore();
        Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = dir, LazyPages = store });
        return (k, dir, store, expected);
    }

    private static Kernel DestFor(Kernel k)
    {
        var dest = new Kernel(k.Config);
        foreach (var f in k.Fs.Files.Where(f => !f.IsShmem && !f.Path.StartsWith("/usr/bin/", StringComparison.Ordinal)))
        {
            var data = new byte[f.Size];
            k.Fs.Read(f, 0, data);
            dest.Fs.Create(f.Path, data);
        }
        return dest;
    }

    [Fact]
    public void LazyDump_WritesPeLazyEntriesWithoutBytes_AndKeepsThePagesOnTheSource()
    {
        var (_, dir, store, _) = LazyDump("lazy-dump");
        var set = ImageSet.Open(dir);
        var pm = set.ReadPagemap(100);
        var lazy = pm.Entries.Where(e => PagemapImage.FlagsOf(e) == PagemapFlags.Lazy).ToList();
        Assert.NotEmpty(lazy);
        ulong lazyPages = lazy.Aggregate(0UL, (s, e) => s + PagemapImage.NrPages(e));
        Assert.Equal((long)lazyPages, store.Pages);
        // Only non-lazy VMAs' pages (file-private copies, the vdso) are stored in the pages image.
        ulong stored = pm.Entries.Where(e => (PagemapImage.FlagsOf(e) & PagemapFlags.Present) != 0).Aggregate(0UL, (s, e) => s + PagemapImage.NrPages(e));
        Assert.True(stored < lazyPages, $"{stored} pages stored, {lazyPages} lazy");
        Directory.Delete(dir, true);
    }

    [Fact]
    public void PlainRestore_OfALazyDump_SaysHowToRestoreIt()
    {
        var (k, dir, _, _) = LazyDump("lazy-plain");
        var e = Assert.Throws<DumperException>(() => Criu.Restore(new ClockOnlyHost(DestFor(k)).AsKernelApi(), new RestoreOptions { ImagesDir = dir }));
        Assert.Contains("--lazy-pages", e.Message);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void LazyRestore_FaultsAndDrain_RebuildTheSameMemory_AndTheChecksumsAddUp()
    {
        var (k, dir, store, expected) = LazyDump("lazy-restore");
        var dest = DestFor(k);
        var api = new ClockOnlyHost(dest).AsKernelApi();
        var rr = Criu.Restore(api, new RestoreOptions { ImagesDir = dir, LazyPages = true });
        var lt = Assert.Single(rr.Lazy);
        Assert.NotEmpty(lt.Checks);
        Assert.Contains(" um", dest.Proc.Smaps(100));
        using var daemon = new LazyPagesDaemon(api, new StoreLazyPageSource(store), rr.Lazy, new LazyLinkModel(100_000, 1e9));
        // A fault first: the task reads a lazy page, the daemon serves it from the source.
        var (va, _) = lt.Ranges[0];
        var b = new byte[8];
        dest.GetTask(100).Read(va, b).OrThrow("read");
        Assert.Equal(1, daemon.Stats.Faults);
        Assert.Equal(1, daemon.Stats.PagesByFault);
        while (!daemon.Complete)
            Assert.True(daemon.Drain(64 << 10) > 0);
        Assert.Null(daemon.VerifyError);
        Assert.Equal(lt.Checks.Count, daemon.VmasVerified);
        Assert.Equal(store.Pages - 1, daemon.Stats.PagesByDrain);
        Assert.DoesNotContain(" um", dest.Proc.Smaps(100)); // closed: ordinary memory again
        RoundTrip.AssertSame(expected, dest);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void SourceLost_StopsTheTree_AndNamesTheLostPages()
    {
        var (k, dir, store, _) = LazyDump("lazy-lost");
        var dest = DestFor(k);
        var api = new ClockOnlyHost(dest).AsKernelApi();
        var rr = Criu.Restore(api, new RestoreOptions { ImagesDir = dir, LazyPages = true });
        using var daemon = new LazyPagesDaemon(api, new StoreLazyPageSource(store), rr.Lazy, new LazyLinkModel(100_000, 1e9));
        daemon.Drain(16 << 10);
        long before = daemon.PagesRemaining;
        store.Lose();
        daemon.Drain(16 << 10);
        Assert.True(daemon.Failed);
        Assert.False(dest.FindTask(100) is { Alive: true }); // killed (and reaped), never run on
        Assert.Equal(before, daemon.Stats.PagesLost);
        Assert.Contains("never arrived", daemon.Error);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void OnlyPrivateAnonymousUnlockedMemory_IsLazy_AsCriusVmaEntryCanBeLazy()
    {
        // criu/include/vma.h vma_entry_can_be_lazy: MAP_ANONYMOUS && MAP_PRIVATE && !MAP_LOCKED,
        // not the vDSO or vsyscall area. Shared anonymous memory (shmem) and mlocked memory stay eager.
        var k = RoundTrip.NewKernel();
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("lazy-rule", 100);
        int ps = k.Arch.PageSize;
        ulong anon = Procs.Map(t, 8);
        Procs.Fill(t, anon, 8, 1);
        ulong locked = Procs.Map(t, 8, KernelApi.MapFlags.Locked);
        Procs.Fill(t, locked, 8, 2);
        var sr = t.Mmap(0, 8 * (ulong)ps, KernelApi.Prot.Read | KernelApi.Prot.Write, KernelApi.MapFlags.Shared | KernelApi.MapFlags.Anonymous);
        Assert.True(sr.Ok);
        ulong shared = (ulong)sr.Value;
        Procs.Fill(t, shared, 8, 3);
        string dir = RoundTrip.NewDir("lazy-rule");
        var store = new LazyPageStore();
        Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = dir, LazyPages = store });
        var pm = ImageSet.Open(dir).ReadPagemap(100);
        bool LazyIn(ulong start) => pm.Entries.Any(e => PagemapImage.FlagsOf(e) == PagemapFlags.Lazy
            && e.Vaddr < start + 8 * (ulong)ps && e.Vaddr + PagemapImage.NrPages(e) * (ulong)PageGeometry.PageSize > start);
        Assert.True(LazyIn(anon), "private anonymous memory is lazy");
        Assert.False(LazyIn(locked), "MAP_LOCKED memory is not lazy");
        Assert.False(LazyIn(shared), "shared anonymous memory is not lazy");
        var held = store.Addresses(100);
        Assert.Equal(8 * ps / PageGeometry.PageSize, held.Count(a => a >= anon && a < anon + 8 * (ulong)ps));
        Assert.DoesNotContain(held, a => (a >= locked && a < locked + 8 * (ulong)ps) || (a >= shared && a < shared + 8 * (ulong)ps));
        Directory.Delete(dir, true);
    }
}

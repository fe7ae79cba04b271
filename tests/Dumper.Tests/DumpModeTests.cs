using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.Dumper.Tests;

/// <summary>CRIU's --pre-dump-mode (splice, read) and --timeout, in the simulated kernel's virtual time.</summary>
public class DumpModeTests
{
    /// <summary>Two identical machines, each with the same rich process (pid 100).</summary>
    private static (Kernel K, ClockOnlyHost Host) Machine()
    {
        var k = RoundTrip.NewKernel();
        Procs.Rich(k, 100);
        return (k, new ClockOnlyHost(k));
    }

    private static Dictionary<string, byte[]> Files(string dir, params string[] except) =>
        Directory.EnumerateFiles(dir).Where(f => !except.Contains(Path.GetFileName(f)))
            .ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes);

    [Fact]
    public void ReadAndSplice_WriteTheSameImages_ReadIsFrozenShorter()
    {
        var (_, h1) = Machine();
        var (_, h2) = Machine();
        string root = RoundTrip.NewDir("mode");
        var splice = Criu.PreDump(h1.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = Path.Combine(root, "splice") });
        var read = Criu.PreDump(h2.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = Path.Combine(root, "read"), PreDumpMode = PreDumpMode.Read });

        // Every image but the inventory (which records the mode), the stats and the manifest (which
        // digests those two) is byte-identical.
        var a = Files(Path.Combine(root, "splice"), "inventory.img", "stats-dump", "criu-sharp.manifest");
        var b = Files(Path.Combine(root, "read"), "inventory.img", "stats-dump", "criu-sharp.manifest");
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        Assert.True(a.Count >= 2);
        foreach (var (name, bytes) in a)
            Assert.True(bytes.AsSpan().SequenceEqual(b[name]), $"{name} differs");
        Assert.Equal(1u, ImageSet.Open(Path.Combine(root, "splice")).ReadInventory().PreDumpMode);
        Assert.Equal(2u, ImageSet.Open(Path.Combine(root, "read")).ReadInventory().PreDumpMode);

        // The copy leaves the frozen window: frozen time shrinks by the copy at the cost model's
        // 8 GB/s; memdump time (the copy included) is the same.
        ulong copyUs = RestoreStats.Us(CostModel.Ns(splice.Stats.PagesWritten * 4096.0, CostModel.Default.CopyBytesPerSecond));
        Assert.True(copyUs > 0);
        Assert.Equal(splice.Stats.PagesWritten, read.Stats.PagesWritten);
        Assert.InRange(splice.Stats.FrozenTime - read.Stats.FrozenTime, copyUs - 2, copyUs + 2);
        Assert.InRange((long)splice.Stats.MemdumpTime - (long)read.Stats.MemdumpTime, -2, 2);
    }

    [Fact]
    public void ReadMode_SkipsUnreadableVmas_AndTheNextDumpTakesThemWhole()
    {
        var (k, host) = Machine();
        var t = k.FindTask(100)!;
        int ps = k.Arch.PageSize;
        ulong none = Procs.Map(t, 4);
        Procs.Fill(t, none, 4, 5);
        Assert.True(t.Mprotect(none, 4UL * (ulong)ps, Prot.None).Ok);
        string root = RoundTrip.NewDir("mode-none");
        var expected = RoundTrip.Snapshot(k, 100);
        Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = Path.Combine(root, "p1"), PreDumpMode = PreDumpMode.Read });
        var pm = ImageSet.Open(Path.Combine(root, "p1")).ReadPagemap(100);
        Assert.DoesNotContain(pm.Entries, e => e.Vaddr >= none && e.Vaddr < none + 4UL * (ulong)ps);

        // A splice pre-dump, then the dump, over a read-mode parent: the PROT_NONE pages are
        // dumped in full, not left to a parent that never had them, and restore is exact.
        var p2 = Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = Path.Combine(root, "p2"), PrevImagesDir = "../p1" });
        var pm2 = ImageSet.Open(Path.Combine(root, "p2")).ReadPagemap(100);
        Assert.Contains(pm2.Entries, e => e.Vaddr == none && (PagemapImage.FlagsOf(e) & PagemapFlags.Parent) == 0);
        Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = Path.Combine(root, "d"), PrevImagesDir = "../p2" });
        var dest = new Kernel(k.Config);
        foreach (var f in k.Fs.Files.Where(f => !f.IsShmem && !f.Path.StartsWith("/usr/bin/", StringComparison.Ordinal)))
        {
            var data = new byte[f.Size];
            k.Fs.Read(f, 0, data);
            dest.Fs.Create(f.Path, data);
        }
        Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = Path.Combine(root, "d") });
        RoundTrip.AssertSame(expected, dest);
        Assert.True(p2.Stats.PagesWritten >= 4);
    }

    [Fact]
    public void ReadModeChain_RestoresByteForByte()
    {
        var (k, host) = Machine();
        var t = k.FindTask(100)!;
        ulong a = Procs.Map(t, 16);
        Procs.Fill(t, a, 16, 3);
        string root = RoundTrip.NewDir("mode-chain");
        Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = Path.Combine(root, "p1"), PreDumpMode = PreDumpMode.Read });
        Procs.Touch(t, a + 8, 77);
        Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = Path.Combine(root, "p2"), PrevImagesDir = "../p1", PreDumpMode = PreDumpMode.Read });
        Procs.Touch(t, a + 4096 * 3, 78);
        var expected = RoundTrip.Snapshot(k, 100);
        var dump = Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = Path.Combine(root, "d"), PrevImagesDir = "../p2" });
        Assert.True(dump.Stats.PagesSkippedParent > 0);
        var dest = new Kernel(k.Config);
        foreach (var f in k.Fs.Files.Where(f => !f.IsShmem && !f.Path.StartsWith("/usr/bin/", StringComparison.Ordinal)))
        {
            var data = new byte[f.Size];
            k.Fs.Read(f, 0, data);
            dest.Fs.Create(f.Path, data);
        }
        Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = Path.Combine(root, "d") });
        RoundTrip.AssertSame(expected, dest);
    }

    [Theory]
    [InlineData(5u, true)]   // three tasks at 2 s each: 6 s of freezing, more than 5
    [InlineData(7u, false)]
    [InlineData(0u, false)]  // 0: no limit
    public void Timeout_FailsTheDumpCleanly_AndThawsTheTree(uint timeout, bool fails)
    {
        var (k, host) = Machine();
        k.Fork(k.FindTask(100)!, 101);
        k.Fork(k.FindTask(100)!, 102);
        string dir = Path.Combine(RoundTrip.NewDir("timeout"), "d");
        var options = new DumpOptions
        {
            Pid = 100, ImagesDir = dir, TimeoutSeconds = timeout,
            Cost = CostModel.Default with { FreezeNsPerTask = 2_000_000_000 },
        };
        ulong before = k.Proc.UptimeNs;
        if (!fails)
        {
            Criu.Dump(host.AsKernelApi(), options with { LeaveRunning = true });
            Assert.False(File.Exists(Path.Combine(dir, ImageNames.IncompleteMarker)));
            return;
        }
        var e = Assert.Throws<DumperException>(() => Criu.Dump(host.AsKernelApi(), options));
        Assert.Equal(DumperErrorKind.Timeout, e.Kind);
        Assert.Contains("timeout reached", e.Message);
        Assert.Contains("--timeout 5 s", e.Message);
        // The alarm fired after the limit, with the tree frozen; then it was thawed, not killed.
        Assert.Equal(before + 5_000_000_000UL, k.Proc.UptimeNs);
        Assert.All(k.Tree(100), x => Assert.Equal(TaskState.Running, x.State));
        // Nothing that looks like a dump: marked incomplete, no inventory.
        Assert.True(File.Exists(Path.Combine(dir, ImageNames.IncompleteMarker)));
        Assert.False(File.Exists(Path.Combine(dir, "inventory.img")));
    }

    [Fact]
    public void LeaveStopped_Dump_LeavesTheTreeStopped()
    {
        var (k, host) = Machine();
        k.Fork(k.FindTask(100)!, 101);
        Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = Path.Combine(RoundTrip.NewDir("stopped"), "d"), LeaveStopped = true });
        Assert.All(k.Tree(100), x => Assert.Equal(TaskState.Stopped, x.State));
        Assert.Equal(2, k.Tree(100).Count);
        Assert.Contains("State:\tT (stopped)", k.Proc.Status(100));
    }
}

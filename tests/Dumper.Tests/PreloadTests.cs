using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>Destination pre-loading: pre-dumps applied as they arrive, the final restore reads only the final dump.</summary>
public class PreloadTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void PreloadedRestore_ReadsOnlyTheFinalDump_AndRestoresTheSameBytes(bool lz4)
    {
        var store = lz4 ? PageStoreOptions.Lz4() : PageStoreOptions.Raw;
        var k = RoundTrip.NewKernel();
        var host = new ClockOnlyHost(k);
        var t = Procs.Rich(k, 100);
        int ps = k.Arch.PageSize;
        ulong a = Procs.Map(t, 64);
        Procs.Fill(t, a, 64, 9);
        string dir = RoundTrip.NewDir("preload");
        var pre = new PreloadedPages();
        string? prev = null;
        for (int i = 0; i < 3; i++)
        {
            string d = Path.Combine(dir, $"{i}");
            Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = d, PrevImagesDir = prev, PageStore = store });
            pre.Apply(d);
            prev = $"../{i}";
            Procs.Touch(t, a + (ulong)(i * 5) * (ulong)ps, (ulong)i + 1000);
            if (i == 1)
                t.Madvise(a + 40UL * (ulong)ps, 3UL * (ulong)ps, KernelApi.Madvise.DontNeed); // dropped after being preloaded
        }
        var expected = RoundTrip.Snapshot(k, 100);
        string final = Path.Combine(dir, "final");
        Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = 100, ImagesDir = final, PrevImagesDir = prev, PageStore = store, TrackMem = true });

        RestoreResult Restore(PreloadedPages? p, out Kernel dest)
        {
            dest = new Kernel(k.Config);
            foreach (var f in k.Fs.Files.Where(f => !f.IsShmem && !f.Path.StartsWith("/usr/bin/", StringComparison.Ordinal)))
            {
                var data = new byte[f.Size];
                k.Fs.Read(f, 0, data);
                dest.Fs.Create(f.Path, data);
            }
            return Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = final, Preloaded = p });
        }
        var plain = Restore(null, out var d1);
        RoundTrip.AssertSame(expected, d1);
        var preloaded = Restore(pre, out var d2);
        RoundTrip.AssertSame(expected, d2);
        Assert.True(plain.Stats.PagesFromParent > 0);
        Assert.True(preloaded.Stats.PagesFromParent == 0, $"{preloaded.Stats.PagesFromParent} of {plain.Stats.PagesFromParent} pages still read from the parents");
        Assert.True(preloaded.Stats.RestoreTime < plain.Stats.RestoreTime, $"restore {preloaded.Stats.RestoreTime} us vs {plain.Stats.RestoreTime} us");
        Directory.Delete(dir, recursive: true);
    }
}

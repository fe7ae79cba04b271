using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// Elision and deltas through a page server: elided pages travel as ADD_F PE_PARENT (CRIU's
/// protocol), delta pages as PS_IOV_ADD_DELTA after PS_IOV_FEATURES announced it (our
/// extension), and the server writes the same PE_DELTA entries and deltas file a local dump does.
/// </summary>
public class PageServerDeltaTests
{
    private const int Pid = 320;
    private const int Ps = 4096;

    private sealed record Result(string Root, List<DumpResult> Steps, List<TaskSnapshot> Before, ulong Heap, Kernel Kernel, List<PageServerSessionResult> Sessions);

    /// <summary>
    /// Two pre-dumps and a dump of 64 written pages, each through a fresh page server into
    /// ROOT/server/N (local images into ROOT/local/N, copied beside the pages afterwards).
    /// Between dumps page 3 is rewritten with its own bytes, pages 10..13 get one word changed,
    /// page 20 gets new bytes.
    /// </summary>
    private static Result Run(SentPages? history, bool extensions = true)
    {
        var k = RoundTrip.NewKernel("x86_64");
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("psdelta", Pid);
        ulong heap = Procs.Map(t, 64);
        Procs.Fill(t, heap, 64, 5);
        string root = RoundTrip.NewDir("psdelta");
        var rnd = new Random(9);
        var steps = new List<DumpResult>();
        var sessions = new List<PageServerSessionResult>();
        List<TaskSnapshot> before = [];
        var store = PageStoreOptions.Lz4();
        for (int i = 1; i <= 3; i++)
        {
            string local = Path.Combine(root, "local", $"{i}"), server = Path.Combine(root, "server", $"{i}");
            string? prev = i > 1 ? $"../{i - 1}" : null;
            using var ps = new PageServerTests.Running(new PageServerOptions { ImagesDir = server, PrevImagesDir = prev, PageStore = store, Sessions = 1, Extensions = extensions });
            var o = new DumpOptions
            {
                Pid = Pid, ImagesDir = local, PrevImagesDir = prev, PageStore = store, TrackMem = true, History = history,
                PageServer = new PageServerEndpoint { Address = "127.0.0.1", Port = ps.Port, IoTimeout = PageServerTests.Io, WireCompression = store },
            };
            if (i == 3)
                before = RoundTrip.Snapshot(k, Pid);
            steps.Add(i < 3 ? Criu.PreDump(host.AsKernelApi(), o) : Criu.Dump(host.AsKernelApi(), o));
            var r = Assert.Single(ps.Finish());
            Assert.True(r.Closed, $"step {i}: {r.Error}");
            sessions.Add(r);
            foreach (var f in Directory.GetFiles(local))
                if (new FileInfo(f).LinkTarget is null && Path.GetFileName(f) != ImageNames.IncompleteMarker)
                    File.Copy(f, Path.Combine(server, Path.GetFileName(f)), overwrite: true);
            if (i == 3)
                break;
            var same = new byte[Ps];
            Assert.True(k.Proc.ReadMemory(Pid, heap + 3UL * Ps, same).Ok);
            Assert.True(t.Write(heap + 3UL * Ps, same).Ok);
            for (int p = 10; p < 14; p++)
                Procs.Touch(t, heap + (ulong)(p * Ps) + 128, (ulong)rnd.NextInt64());
            var fresh = new byte[Ps];
            rnd.NextBytes(fresh);
            Assert.True(t.Write(heap + 20UL * Ps, fresh).Ok);
        }
        return new Result(root, steps, before, heap, k, sessions);
    }

    private static PagemapFlags FlagsAt(string dir, ulong va)
    {
        var pm = ImageSet.Open(dir).ReadPagemap(Pid);
        return PagemapImage.FlagsOf(pm.Entries[pm.FindEntry(va)]);
    }

    [Fact]
    public void Deltas_ThroughThePageServer_AreWrittenAsLocally_AndRestoreByteForByte()
    {
        var r = Run(new SentPages(elide: true, cacheBytes: 64L << 20));
        foreach (var step in r.Steps.Skip(1))
        {
            var d = step.Stats.Delta!;
            // Page 3 and the two [vdso] pages elided; pages 10..13 as deltas; page 20 whole.
            Assert.Equal(3UL, d.PagesElided);
            Assert.Equal(4UL, d.PagesDelta);
        }
        string server2 = Path.Combine(r.Root, "server", "2");
        Assert.Equal(PagemapFlags.Parent, FlagsAt(server2, r.Heap + 3UL * Ps));
        Assert.Equal(PagemapFlags.Delta, FlagsAt(server2, r.Heap + 10UL * Ps));
        Assert.Equal(PagemapFlags.Present, FlagsAt(server2, r.Heap + 20UL * Ps));
        Assert.True(File.Exists(Path.Combine(server2, "deltas-1.img")));
        Assert.Equal(PagemapFlags.Delta, FlagsAt(Path.Combine(r.Root, "server", "3"), r.Heap + 12UL * Ps));

        var dest = RoundTrip.NewKernel("x86_64");
        var rr = Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = Path.Combine(r.Root, "server", "3") });
        Assert.True(rr.Stats.VmasVerified > 0);
        RoundTrip.AssertSame(r.Before, dest);

        // The same chain without deltas puts more page bytes on the wire.
        var whole = Run(new SentPages(elide: true, cacheBytes: 0));
        Assert.True(r.Sessions[1].BytesReceived < whole.Sessions[1].BytesReceived,
            $"{r.Sessions[1].BytesReceived} B with deltas, {whole.Sessions[1].BytesReceived} B without");
        Directory.Delete(r.Root, true);
        Directory.Delete(whole.Root, true);
    }

    [Fact]
    public void ADeltaClient_IsRefusedWithOneLine_ByAServerWithoutTheExtension()
    {
        var k = RoundTrip.NewKernel("x86_64");
        var host = new ClockOnlyHost(k);
        var t = k.Spawn("old", Pid);
        Procs.Fill(t, Procs.Map(t, 8), 8, 2);
        string root = RoundTrip.NewDir("psold");
        using var ps = new PageServerTests.Running(new PageServerOptions { ImagesDir = Path.Combine(root, "server"), Sessions = 1, Extensions = false });
        var o = new DumpOptions
        {
            Pid = Pid, ImagesDir = Path.Combine(root, "local"), History = new SentPages(elide: true, cacheBytes: 1L << 20),
            PageServer = new PageServerEndpoint { Address = "127.0.0.1", Port = ps.Port, IoTimeout = PageServerTests.Io },
        };
        var e = Assert.Throws<PageServerException>(() => Criu.PreDump(host.AsKernelApi(), o));
        Assert.Contains("does not take delta pages", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        // The server goes on serving: a client without deltas completes its pre-dump.
        Criu.PreDump(host.AsKernelApi(), o with { History = null });
        var sessions = ps.Finish();
        Assert.Equal(2, sessions.Count);
        Assert.False(sessions[0].Closed);
        Assert.Contains("unknown command 0x5301", sessions[0].Error);
        Assert.True(sessions[1].Closed, sessions[1].Error);
        // The tree was not harmed and runs on.
        Assert.True(k.FindTask(Pid)!.Alive);
        Directory.Delete(root, true);
    }

    [Fact]
    public void Elision_WorksWithAServerWithoutTheExtension_AsPlainHoles()
    {
        var r = Run(new SentPages(elide: true, cacheBytes: 0), extensions: false);
        Assert.Equal(3UL, r.Steps[1].Stats.Delta!.PagesElided);
        Assert.Equal(PagemapFlags.Parent, FlagsAt(Path.Combine(r.Root, "server", "2"), r.Heap + 3UL * Ps));
        var dest = RoundTrip.NewKernel("x86_64");
        Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = Path.Combine(r.Root, "server", "3") });
        RoundTrip.AssertSame(r.Before, dest);
        Directory.Delete(r.Root, true);
    }
}

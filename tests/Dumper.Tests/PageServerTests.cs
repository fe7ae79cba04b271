using System.Net.Sockets;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// The page server on loopback: CRIU's page-xfer protocol end to end (pre-dump chains written
/// through it restore byte for byte and match a local dump's images), and hostile peers (each
/// bad connection is closed with one line while the server goes on serving the next one).
/// </summary>
public class PageServerTests
{
    internal static readonly TimeSpan Io = TimeSpan.FromSeconds(20);

    /// <summary>A listener serving on a background thread until disposed.</summary>
    internal sealed class Running : IDisposable
    {
        private readonly CancellationTokenSource _cts = new();
        private readonly Task<IReadOnlyList<PageServerSessionResult>> _task;
        public readonly List<string> Log = [];

        public Running(PageServerOptions o)
        {
            Listener = PageServerListener.Start(o with { Address = "127.0.0.1", Port = 0, IdleTimeout = Io });
            _task = Task.Factory.StartNew(() => Listener.Serve(l => { lock (Log) Log.Add(l); }, _cts.Token), TaskCreationOptions.LongRunning);
        }

        public PageServerListener Listener { get; }
        public int Port => Listener.Port;

        /// <summary>Waits (bounded) until the server has served this many sessions and returns them.</summary>
        public IReadOnlyList<PageServerSessionResult> Finish()
        {
            Assert.True(_task.Wait(Io), "the page server did not finish its sessions in time");
            return _task.Result;
        }

        public void Dispose()
        {
            _cts.Cancel();
            try { _task.Wait(Io); } catch (AggregateException) { }
            Listener.Dispose();
        }
    }


    private static Kernel BuildTree(out SimTask t, out ulong a)
    {
        var k = RoundTrip.NewKernel();
        t = Procs.Rich(k, 100);
        a = Procs.Map(t, 40);
        Procs.Fill(t, a, 40, 5);
        return k;
    }

    private static void Between(SimTask t, ulong a, int i, int ps)
    {
        Procs.Touch(t, a + (ulong)(i * 3 % 40) * (ulong)ps, (ulong)i + 77);
        Procs.Touch(t, a + (ulong)((i * 7 + 1) % 40) * (ulong)ps, (ulong)i + 78);
    }

    /// <summary>Runs 2 pre-dumps and a dump, each through a fresh single-session page server (or locally).</summary>
    private static (string Final, List<DumpResult> Steps, List<TaskSnapshot> AtDump) Chain(Kernel k, SimTask t, ulong a, string baseDir, PageServerLayout? layout, PageStoreOptions store, bool wire = false)
    {
        var host = new ClockOnlyHost(k);
        var steps = new List<DumpResult>();
        List<TaskSnapshot> atDump = [];
        string? prev = null;
        for (int i = 0; i < 3; i++)
        {
            bool final = i == 2;
            string local = Path.Combine(baseDir, "local", $"{i}");
            string server = Path.Combine(baseDir, "server", $"{i}");
            Running? ps = layout is { } l
                ? new Running(new PageServerOptions { ImagesDir = server, PrevImagesDir = prev, Layout = l, PageStore = store, Sessions = 1 })
                : null;
            using (ps)
            {
                var o = new DumpOptions
                {
                    Pid = 100, ImagesDir = local, PrevImagesDir = prev, PageStore = store, TrackMem = true,
                    PageServer = ps is null ? null : new PageServerEndpoint { Address = "127.0.0.1", Port = ps.Port, Layout = layout!.Value, IoTimeout = Io, WireCompression = wire ? store : null },
                };
                if (final)
                    atDump = RoundTrip.Snapshot(k, 100);
                steps.Add(final ? Criu.Dump(host.AsKernelApi(), o) : Criu.PreDump(host.AsKernelApi(), o));
                if (ps is not null)
                {
                    var r = Assert.Single(ps.Finish());
                    Assert.True(r.Closed, r.Error);
                    // What CRIU users do next: bring the locally written images beside the pages.
                    foreach (var f in Directory.GetFiles(local))
                        if (new FileInfo(f).LinkTarget is null && Path.GetFileName(f) != ImageNames.IncompleteMarker)
                            File.Copy(f, Path.Combine(server, Path.GetFileName(f)), overwrite: true);
                }
            }
            if (!final)
                Between(t, a, i, k.Arch.PageSize);
            prev = $"../{i}";
        }
        return (Path.Combine(baseDir, layout is null ? "local" : "server", "2"), steps, atDump);
    }

    [Theory]
    [InlineData(PageServerLayout.Current, "lz4", false)]
    [InlineData(PageServerLayout.Pre42, "none", false)]
    [InlineData(PageServerLayout.Current, "lz4", true)]
    [InlineData(PageServerLayout.Pre42, "zstd", true)]
    public void Chain_ThroughPageServer_RestoresByteForByte_AndMatchesLocalImages(PageServerLayout layout, string codec, bool compressedBlocks)
    {
        var store = codec switch { "lz4" => PageStoreOptions.Lz4(), "zstd" => PageStoreOptions.Zstd(), _ => PageStoreOptions.Raw };
        string dir = RoundTrip.NewDir("ps-chain");
        // Two identical trees: one dumped locally, one through the page server.
        var k1 = BuildTree(out var t1, out var a1);
        var k2 = BuildTree(out var t2, out var a2);
        var (_, localSteps, _) = Chain(k1, t1, a1, Path.Combine(dir, "a"), null, store);
        var (serverFinal, serverSteps, expected) = Chain(k2, t2, a2, Path.Combine(dir, "b"), layout, store, compressedBlocks);
        if (compressedBlocks)
            Assert.True(serverSteps[0].Stats.BytesCompressed * 4 < serverSteps[0].Stats.BytesRaw, "compressed blocks shrink the pages on the wire");
        Assert.True(serverSteps[^1].Stats.PagesSkippedParent > 0, "the final dump leaves clean pages to the parents on the server");
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(localSteps[i].Stats.PagesWritten, serverSteps[i].Stats.PagesWritten);
            Assert.Equal(localSteps[i].Stats.PagesSkippedParent, serverSteps[i].Stats.PagesSkippedParent);
            foreach (var name in new[] { ImageNames.Pagemap(100), ImageNames.Pages(1) })
                Assert.True(File.ReadAllBytes(Path.Combine(dir, "a", "local", $"{i}", name)).AsSpan()
                    .SequenceEqual(File.ReadAllBytes(Path.Combine(dir, "b", "server", $"{i}", name))), $"{name} of step {i} differs from the local dump's");
        }
        var dest = new Kernel(k2.Config);
        foreach (var f in k2.Fs.Files.Where(f => !f.IsShmem && !f.Path.StartsWith("/usr/bin/", StringComparison.Ordinal)))
        {
            var data = new byte[f.Size];
            k2.Fs.Read(f, 0, data);
            dest.Fs.Create(f.Path, data);
        }
        Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = serverFinal });
        RoundTrip.AssertSame(expected, dest);
        Directory.Delete(dir, recursive: true);
    }

    [Fact]
    public void Header_CurrentAndPre42Layouts_AreTheCStructsInHostOrder()
    {
        var iov = new PageServerIov(PageServerIov.EncodeCmd(PageServerCommand.AddF, PagemapFlags.Present), 3, 0x7f0000001000, PageServerIov.EncodeDst(PageServerImageType.Pid, 1000));
        var cur = new byte[32];
        iov.Write(cur, PageServerLayout.Current);
        Assert.Equal(Convert.FromHexString("06000400" + "00000000" + "0300000000000000" + "00100000007f0000" + "01e8030000000000"), cur);
        var old = new byte[24];
        iov.Write(old, PageServerLayout.Pre42);
        Assert.Equal(Convert.FromHexString("06000400" + "03000000" + "00100000007f0000" + "01e8030000000000"), old);
        Assert.Equal(iov, PageServerIov.Read(cur, PageServerLayout.Current));
        Assert.Equal(iov, PageServerIov.Read(old, PageServerLayout.Pre42));
        // decode_pm accepts the CR_FD_* numbers older CRIUs sent.
        Assert.True(PageServerIov.TryDecodeDst((1000UL << 8) | 11, out var type, out ulong id));
        Assert.Equal((PageServerImageType.Pid, 1000UL), (type, id));
        Assert.False(PageServerIov.TryDecodeDst((1000UL << 8) | 3, out _, out _));
    }

    private static byte[] Hdr(PageServerCommand c, PagemapFlags f, ulong nr, ulong va, ulong dst, PageServerLayout l = PageServerLayout.Current)
    {
        var b = new byte[PageServerIov.SizeOf(l)];
        new PageServerIov(PageServerIov.EncodeCmd(c, f), nr, va, dst).Write(b, l);
        return b;
    }

    private static readonly ulong Pid1 = PageServerIov.EncodeDst(PageServerImageType.Pid, 1);

    /// <summary>Each case: what a hostile or broken client sends, then it waits for the server to close.</summary>
    public static TheoryData<string, byte[]> BadSessions()
    {
        var d = new TheoryData<string, byte[]>();
        var open = Hdr(PageServerCommand.Open, 0, 0, 0, Pid1);
        d.Add("unknown command", Hdr((PageServerCommand)0x99, 0, 0, 0, Pid1));
        d.Add("random bytes", Enumerable.Range(0, 64).Select(i => (byte)(i * 37 + 11)).ToArray());
        d.Add("truncated header", Hdr(PageServerCommand.Open2, 0, 0, 0, Pid1)[..13]);
        d.Add("oversized nr_pages", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Present, 1UL << 40, 0x10000, Pid1)]);
        d.Add("zero nr_pages", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Present, 0, 0x10000, Pid1)]);
        d.Add("out of order", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Lazy, 4, 0x20000, Pid1), .. Hdr(PageServerCommand.AddF, PagemapFlags.Lazy, 1, 0x10000, Pid1)]);
        d.Add("unaligned vaddr", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Lazy, 1, 0x10010, Pid1)]);
        d.Add("address overflow", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Lazy, 2, ulong.MaxValue - 4095, Pid1)]);
        d.Add("bad flags", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Present | PagemapFlags.Parent, 1, 0x10000, Pid1)]);
        d.Add("hole without parent", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Parent, 1, 0x10000, Pid1)]);
        d.Add("unknown image type", Hdr(PageServerCommand.Open, 0, 0, 0, (5UL << 8) | 9));
        d.Add("pid out of range", Hdr(PageServerCommand.Open, 0, 0, 0, (ulong.MaxValue >> 8) << 8 | 1));
        d.Add("pages cut short", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Present, 2, 0x10000, Pid1), .. new byte[4096 + 100]]);
        d.Add("no CLOSE", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Lazy, 1, 0x10000, Pid1)]);
        d.Add("GET on a receiving server", Hdr(PageServerCommand.Get, 0, 1, 0x10000, Pid1));
        d.Add("flags on OPEN", Hdr(PageServerCommand.Open, PagemapFlags.Present, 0, 0, Pid1));
        d.Add("oversized compressed block", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Present | (PagemapFlags)PageServerBlocks.Flag, 1, 0x10000, Pid1),
            .. BitConverter.GetBytes(1u | 16u << 8), .. BitConverter.GetBytes(0x7fffffffu)]);
        d.Add("unknown block codec", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Present | (PagemapFlags)PageServerBlocks.Flag, 1, 0x10000, Pid1),
            .. BitConverter.GetBytes(7u | 16u << 8)]);
        d.Add("corrupt compressed block", [.. open, .. Hdr(PageServerCommand.AddF, PagemapFlags.Present | (PagemapFlags)PageServerBlocks.Flag, 1, 0x10000, Pid1),
            .. BitConverter.GetBytes(1u | 16u << 8), .. BitConverter.GetBytes(8u), .. new byte[] { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff }]);
        d.Add("same pagemap twice", [.. open, .. Hdr(PageServerCommand.Open, 0, 0, 0, PageServerIov.EncodeDst(PageServerImageType.Pid, 2)), .. open]);
        return d;
    }

    [Theory]
    [MemberData(nameof(BadSessions))]
    public void BadSession_IsClosedWithOneLine_AndTheServerServesTheNext(string what, byte[] bytes)
    {
        string root = RoundTrip.NewDir("ps-bad");
        string dir = Path.Combine(root, "images");
        using var ps = new Running(new PageServerOptions { ImagesDir = dir, Sessions = 1 });
        using (var bad = new TcpClient("127.0.0.1", ps.Port) { ReceiveTimeout = (int)Io.TotalMilliseconds })
        {
            var s = bad.GetStream();
            s.Write(bytes);
            bad.Client.Shutdown(SocketShutdown.Send);
            // The server closes its side: reading reaches the end (answers to OPEN2/PARENT aside).
            var sink = new byte[4096];
            int total = 0, n;
            while ((n = s.Read(sink)) > 0)
                total += n;
            Assert.True(total < 16, $"{what}: the server answered {total} bytes");
        }
        // A well-behaved client is served afterwards, and its session completes.
        var good = new byte[4096];
        good.AsSpan().Fill(0x5a);
        using (var c = new TcpClient("127.0.0.1", ps.Port))
        {
            var s = c.GetStream();
            s.Write([.. Hdr(PageServerCommand.Open2, 0, 0, 0, Pid1)]);
            Assert.Equal(0, s.ReadByte()); // no parent
            s.Write([.. Hdr(PageServerCommand.AddF, PagemapFlags.Present, 1, 0x10000, Pid1), .. good, .. Hdr(PageServerCommand.Close, 0, 0, 0, 0)]);
            var status = new byte[4];
            s.ReadExactly(status);
            Assert.Equal(0, BitConverter.ToInt32(status));
        }
        var results = ps.Finish();
        Assert.Equal(2, results.Count);
        Assert.False(results[0].Closed);
        Assert.NotNull(results[0].Error);
        Assert.DoesNotContain('\n', results[0].Error!);
        Assert.True(results[1].Closed, results[1].Error);
        lock (ps.Log)
        {
            Assert.Equal(2, ps.Log.Count);
            Assert.Contains("connection closed", ps.Log[0]);
        }
        // Nothing was written outside the images directory, and the good session's page is there.
        Assert.Equal([dir], Directory.GetFileSystemEntries(root));
        Assert.False(File.Exists(Path.Combine(dir, ImageNames.IncompleteMarker)));
        var pm = PagemapImage.Load(Path.Combine(dir, ImageNames.Pagemap(1)));
        Assert.Single(pm.Entries);
        Assert.Equal(0x10000UL, pm.Entries[0].Vaddr);
        Directory.Delete(root, recursive: true);
    }

    [Fact]
    public void InterruptedSession_LeavesTheDirectoryMarkedIncomplete()
    {
        string dir = Path.Combine(RoundTrip.NewDir("ps-cut"), "images");
        using var ps = new Running(new PageServerOptions { ImagesDir = dir, Sessions = 0 });
        using (var c = new TcpClient("127.0.0.1", ps.Port))
        {
            var s = c.GetStream();
            s.Write(Hdr(PageServerCommand.Open2, 0, 0, 0, Pid1));
            Assert.Equal(0, s.ReadByte());
            s.Write([.. Hdr(PageServerCommand.AddF, PagemapFlags.Present, 1, 0x10000, Pid1), .. new byte[4096]]);
        }
        // The same connection count is reached when the log has one line.
        for (int i = 0; i < 200; i++)
        {
            lock (ps.Log)
                if (ps.Log.Count == 1)
                    break;
            Thread.Sleep(50);
        }
        lock (ps.Log)
            Assert.Contains("before CLOSE", Assert.Single(ps.Log));
        Assert.True(File.Exists(Path.Combine(dir, ImageNames.IncompleteMarker)));
        Assert.False(File.Exists(Path.Combine(dir, ImageNames.Pagemap(1))));
        Assert.Throws<ImageFormatException>(() => ImageSet.Open(dir));
    }

    [Fact]
    public void Dump_ToAPageServerThatIsGone_FailsAndTheTreeKeepsRunning()
    {
        var k = BuildTree(out var t, out _);
        var host = new ClockOnlyHost(k);
        int port;
        using (var l = new TcpListener(System.Net.IPAddress.Loopback, 0))
        {
            l.Start();
            port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        }
        string dir = RoundTrip.NewDir("ps-gone");
        var before = RoundTrip.Snapshot(k, 100);
        var e = Assert.Throws<PageServerException>(() => Criu.Dump(host.AsKernelApi(), new DumpOptions
        {
            Pid = 100, ImagesDir = dir,
            PageServer = new PageServerEndpoint { Address = "127.0.0.1", Port = port, IoTimeout = Io },
        }));
        Assert.Contains("page server", e.Message);
        Assert.True(t.Alive);
        Assert.Equal(TaskState.Running, k.FindTask(100)!.State);
        RoundTrip.AssertSame(before, k);
    }
}

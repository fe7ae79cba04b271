using System.Net;
using System.Net.Sockets;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Engines;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;

namespace CriuSharp.Bench;

/// <summary>
/// Page server on loopback against a plain TCP copy of the same bytes (target ≥ 70 %): 256 MiB of
/// the memory sample sent as ADD_F entries of 1024 pages (raw pages, as CRIU sends them) to a page
/// server storing raw pages-N.img in a RAM-backed directory, against the same bytes written to a
/// socket in 1 MiB writes and copied by the receiver into a file in the same directory.
/// </summary>
[Config(typeof(Cfg))]
public class PageServerBenchmarks
{
    public sealed class Cfg : ManualConfig
    {
        public Cfg() => AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance)
            .WithStrategy(RunStrategy.Monitoring).WithLaunchCount(1).WithWarmupCount(1).WithIterationCount(5));
    }

    private const int Pages = 65536;
    private const int EntryPages = 1024;
    private byte[] _sample = [];
    private string _root = "";

    [GlobalSetup]
    public void Setup()
    {
        _sample = ImageFormatBenchmarks.BuildSample(Pages, 42);
        string shm = Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath();
        _root = Path.Combine(shm, "criu-sharp-ps-bench-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(_root);
    }

    [GlobalCleanup]
    public void Cleanup() => Directory.Delete(_root, true);

    [Benchmark(Baseline = true, Description = "plain TCP copy into a file")]
    public long PlainTcp()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        string path = Path.Combine(_root, "plain.bin");
        var receiver = Task.Run(() =>
        {
            using var c = l.AcceptTcpClient();
            using var s = c.GetStream();
            using var f = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 0);
            var buf = new byte[1 << 20];
            long total = 0;
            int n;
            while ((n = s.Read(buf)) > 0)
            {
                f.Write(buf, 0, n);
                total += n;
            }
            return total;
        });
        using (var c = new TcpClient { NoDelay = true })
        {
            c.Connect(IPAddress.Loopback, port);
            using var s = c.GetStream();
            for (int off = 0; off < _sample.Length; off += 1 << 20)
                s.Write(_sample, off, Math.Min(1 << 20, _sample.Length - off));
        }
        return receiver.GetAwaiter().GetResult();
    }

    [Benchmark(Description = "page server (ADD_F + raw pages)")]
    public long PageServer()
    {
        string dir = Path.Combine(_root, "ps");
        using var server = PageServerListener.Start(new PageServerOptions
        {
            ImagesDir = dir, Address = "127.0.0.1", Port = 0, PageStore = PageStoreOptions.Raw, Sessions = 1,
        });
        var serving = Task.Run(() => server.Serve());
        using (var client = PageServerClient.Connect(new PageServerEndpoint { Address = "127.0.0.1", Port = server.Port }))
        {
            client.Open(PageServerImageType.Pid, 1000);
            ulong dst = PageServerIov.EncodeDst(PageServerImageType.Pid, 1000);
            for (int p = 0; p < Pages; p += EntryPages)
            {
                client.AddF(PagemapFlags.Present, 0x10000000UL + ((ulong)p << 12), EntryPages, dst);
                client.SendPages(_sample.AsSpan(p << 12, EntryPages << 12));
            }
            client.Close();
        }
        var r = serving.GetAwaiter().GetResult();
        if (r.Count != 1 || !r[0].Closed)
            throw new InvalidOperationException("the page server session failed");
        return r[0].BytesReceived;
    }
}

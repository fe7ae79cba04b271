using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Engines;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using CriuSharp.Dumper;
using CriuSharp.HostKernel;
using CriuSharp.ImageFormat;
using LinuxHost = CriuSharp.HostKernel.LinuxHost;

namespace CriuSharp.Bench;

/// <summary>
/// The real host (--machine /proc): a process of this machine holding 1 GiB of the memory sample
/// (memtouch, compiled with the system C compiler, the sample read into an anonymous mapping).
/// <code>
///   RealDump: dump -R of that process (LZ4, 2 threads, images in RAM) vs one tight loop that
///             reads 64 KiB with process_vm_readv and compresses it with LZ4_compress_default —
///             target: ratio ≤ 1 / (0.7 × 2 cores) = 0.71 (70 % of the loop's speed per core used).
///   Digest:   reading the 1 GiB once (process_vm_readv, 1 MiB chunks) vs XXH3 page digests of
///             1 GiB in memory (target ≥ 5 GB/s per core: ≤ 215 ms) and a content-tracker
///             pre-dump with 1 % of the pages changed since its parent (target: ratio ≤ 1.5).
/// </code>
/// </summary>
[Config(typeof(Cfg))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public unsafe class HostBenchmarks : IDisposable
{
    public sealed class Cfg : ManualConfig
    {
        public Cfg()
        {
            AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance)
                // Twenty warm-up runs: the tiered JIT goes on recompiling (with PGO) as methods called
                // a few times per run reach the call count that promotes them, on the same two cores
                // (host-profile, JitInfo per run: a dump 1,077, 431, 345, then 47-240 methods, 20-86 ms,
                // up to the eleventh and bursts of 90-180 later; a content pre-dump 150-250 methods,
                // 55-100 ms, in seven of runs 3-11 and under 35 from the sixteenth, its wall time
                // falling from 240 to 170 ms meanwhile).
                // The measured runs are the steady state of a process that dumps again and again
                // (migrate, migrate-service); a single CLI invocation pays its compilation on top.
                .WithStrategy(RunStrategy.Monitoring).WithLaunchCount(1).WithWarmupCount(20).WithIterationCount(5)
                // One invocation per iteration for every benchmark (as the pre-dump's IterationSetup
                // needs), so all share one job and BenchmarkDotNet prints each category's ratio.
                .WithInvocationCount(1).WithUnrollFactor(1));
            AddColumn(new MemoryRate());
        }
    }

    /// <summary>Every benchmark here goes through the 1 GiB once: its rate in GB/s (10⁹ B/s), the digest target's unit.</summary>
    private sealed class MemoryRate : BenchmarkDotNet.Columns.IColumn
    {
        public string Id => nameof(MemoryRate);
        public string ColumnName => "GB/s";
        public bool AlwaysShow => true;
        public BenchmarkDotNet.Columns.ColumnCategory Category => BenchmarkDotNet.Columns.ColumnCategory.Custom;
        public int PriorityInCategory => 0;
        public bool IsNumeric => true;
        public BenchmarkDotNet.Columns.UnitType UnitType => BenchmarkDotNet.Columns.UnitType.Dimensionless;
        public string Legend => "The 1 GiB of memory each benchmark reads, digests or dumps, per second of its mean (10^9 bytes/s)";
        public bool IsAvailable(BenchmarkDotNet.Reports.Summary summary) => true;
        public bool IsDefault(BenchmarkDotNet.Reports.Summary summary, BenchmarkDotNet.Running.BenchmarkCase benchmarkCase) => false;

        public string GetValue(BenchmarkDotNet.Reports.Summary summary, BenchmarkDotNet.Running.BenchmarkCase benchmarkCase) =>
            summary[benchmarkCase]?.ResultStatistics is { Mean: > 0 } st
                ? ((double)OneGiBPages * PageGeometry.PageSize / st.Mean).ToString("F2", CultureInfo.InvariantCulture) // bytes per ns = GB/s
                : "NA";

        public string GetValue(BenchmarkDotNet.Reports.Summary summary, BenchmarkDotNet.Running.BenchmarkCase benchmarkCase, BenchmarkDotNet.Reports.SummaryStyle style) =>
            GetValue(summary, benchmarkCase);
    }

    private const int OneGiBPages = 262144;
    private const int Block = 64 * 1024;
    private string _dir = "";
    private FileStream? _in;
    private StreamReader? _out;
    private int _pid;
    private ulong _base;
    private byte[] _sample = [];
    private byte* _buf;
    private byte* _lz;
    private int _n;
    /// <summary>The images the last dump or pre-dump wrote, deleted outside the timed region.</summary>
    private string? _last;
    private LinuxHost _host = null!;
    private static string RamRoot { get; } = Directory.Exists("/dev/shm") ? "/dev/shm/criu-sharp-host-bench" : Path.Combine(Path.GetTempPath(), "criu-sharp-host-bench-ram");

    [GlobalSetup]
    public void Setup()
    {
        _dir = Directory.CreateTempSubdirectory("criu-sharp-host-bench-").FullName;
        if (Directory.Exists(RamRoot)) Directory.Delete(RamRoot, true);
        Directory.CreateDirectory(RamRoot);
        _sample = ImageFormatBenchmarks.BuildSample(OneGiBPages, 42);
        string data = Path.Combine(_dir, "sample");
        File.WriteAllBytes(data, _sample);
        string exe = Path.Combine(_dir, "memtouch");
        Run("cc", "-O2", "-o", exe, Path.Combine(AppContext.BaseDirectory, "Programs", "memtouch.c"));
        string fifo = Path.Combine(_dir, "in"), fifoOut = Path.Combine(_dir, "out");
        Run("mkfifo", fifo, fifoOut);
        // Commands in and answers out through FIFOs; the shell backgrounds the child, so it is not
        // our child and .NET's child bookkeeping (waitpid on its own children) never sees the
        // ptrace stops of a dump.
        var psi = new ProcessStartInfo("/bin/sh", ["-c", $"'{exe}' 1 <'{fifo}' >'{fifoOut}' & echo $!"]) { RedirectStandardOutput = true };
        using (var sh = Process.Start(psi)!)
        {
            _pid = int.Parse(sh.StandardOutput.ReadLine()!, CultureInfo.InvariantCulture);
            sh.WaitForExit();
        }
        _in = new FileStream(fifo, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1);
        _out = new StreamReader(new FileStream(fifoOut, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1));
        _out.ReadLine();
        var ok = Ask($"load 1 {data}").Split(' ');
        _base = ulong.Parse(ok[3].AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        File.Delete(data);
        _buf = (byte*)NativeMemory.AlignedAlloc(1 << 20, 4096);
        _lz = (byte*)NativeMemory.Alloc((nuint)ImageFormat.Interop.Lz4.CompressBound(Block));
        _host = new LinuxHost(readRegisters: true);
        Criu.PreDump(_host, new DumpOptions { Pid = _pid, ImagesDir = Path.Combine(RamRoot, "parent"), Tracker = TrackerKind.Content });
    }

    private string Ask(string line)
    {
        var b = System.Text.Encoding.ASCII.GetBytes(line + "\n");
        _in!.Write(b);
        _in.Flush();
        return _out!.ReadLine() ?? throw new InvalidOperationException("memtouch exited");
    }

    private static void Run(string exe, params string[] args)
    {
        using var p = Process.Start(new ProcessStartInfo(exe, args))!;
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{exe} failed");
    }

    private bool _cleaned;

    public void Dispose()
    {
        Cleanup();
        GC.SuppressFinalize(this);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        if (_cleaned)
            return;
        _cleaned = true;
        _in?.Dispose();
        Process.GetProcessById(_pid).Kill();
        _out?.Dispose();
        NativeMemory.AlignedFree(_buf);
        NativeMemory.Free(_lz);
        _host.Dispose();
        Directory.Delete(_dir, true);
        if (Directory.Exists(RamRoot)) Directory.Delete(RamRoot, true);
    }

    private void ReadRemote(ulong va, int bytes)
    {
        if (!_host.ReadMemory(_pid, va, new Span<byte>(_buf, bytes)).Ok)
            throw new InvalidOperationException("process_vm_readv failed");
    }

    [BenchmarkCategory("RealDump"), Benchmark(Baseline = true, Description = "read 1 GiB (process_vm_readv, 64 KiB) + LZ4_compress_default, one loop")]
    public long ReadAndCompress()
    {
        long total = 0;
        int bound = ImageFormat.Interop.Lz4.CompressBound(Block);
        for (long off = 0; off < _sample.Length; off += Block)
        {
            ReadRemote(_base + (ulong)off, Block);
            total += ImageFormat.Interop.Lz4.CompressDefault(_buf, _lz, Block, bound);
        }
        return total;
    }

    [BenchmarkCategory("RealDump"), Benchmark(Description = "dump -R --machine /proc of the 1 GiB process, LZ4, 2 threads, images in RAM")]
    public ulong RealDump()
    {
        string d = Path.Combine(RamRoot, $"dump{_n++}");
        _last = d;
        var r = Criu.Dump(_host, new DumpOptions { Pid = _pid, ImagesDir = d, LeaveRunning = true, Tracker = TrackerKind.Content, PageStore = PageStoreOptions.Lz4() with { Parallelism = 2 } });
        return r.Stats.PagesWritten;
    }

    /// <summary>Freeze (cgroup freezer + ptrace seize) and thaw of the process, for profiling (not a benchmark).</summary>
    internal void FreezeThaw()
    {
        var sw = Stopwatch.StartNew();
        var lease = _host.Freeze(_pid);
        var frozen = sw.Elapsed;
        lease.Thaw();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  freeze {frozen.TotalMilliseconds:F2} ms, thaw {(sw.Elapsed - frozen).TotalMilliseconds:F2} ms ({_host.LastFreezeMethod})"));
    }

    /// <summary>
    /// Reads the 1 GiB in pieces of <paramref name="piece"/> bytes on <paramref name="threads"/>
    /// threads (each its own share), into a buffer <paramref name="offset"/> bytes past a page
    /// boundary, for profiling the read's CPU cost (and what an unaligned destination costs);
    /// with <paramref name="digest"/> each piece is digested right after it is read, as the
    /// content tracker does.
    /// </summary>
    internal void ReadPieces(int piece, int threads, int offset = 0, bool digest = false)
    {
        long share = _sample.Length / threads;
        if (piece < PageGeometry.PageSize || piece % PageGeometry.PageSize != 0 || share % piece != 0 || offset < 0 || offset >= PageGeometry.PageSize)
            throw new ArgumentException($"a piece of {piece} bytes at offset {offset}: a multiple of 4096 that divides each thread's {share} bytes, at an offset below 4096");
        var ts = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            long from = t * share;
            ts[t] = new Thread(() =>
            {
                var buf = PageAlignedBuffer.Allocate(piece + offset).AsSpan(offset, piece);
                ulong sum = 0;
                for (long off = from; off < from + share; off += piece)
                {
                    ulong va = _base + (ulong)off;
                    if (!_host.ReadMemory(_pid, va, buf).Ok)
                        throw new InvalidOperationException("process_vm_readv failed");
                    if (digest)
                        for (int p = 0; p < piece; p += PageGeometry.PageSize)
                            sum += PageDigest.Of(va + (ulong)p, buf.Slice(p, PageGeometry.PageSize));
                }
                GC.KeepAlive(sum);
            });
            ts[t].Start();
        }
        foreach (var t in ts)
            t.Join();
    }

    /// <summary>The last dump's 500 MiB of images go before the next iteration, not inside a timed one.</summary>
    [IterationCleanup(Targets = [nameof(RealDump), nameof(ContentPreDump)])]
    public void DeleteLastImages()
    {
        if (_last is not null && Directory.Exists(_last))
            Directory.Delete(_last, true);
        _last = null;
    }

    [BenchmarkCategory("Digest"), Benchmark(Baseline = true, Description = "read the 1 GiB once (process_vm_readv, 1 MiB chunks)")]
    public long ReadOnce()
    {
        long sum = 0;
        for (long off = 0; off < _sample.Length; off += 1 << 20)
        {
            ReadRemote(_base + (ulong)off, 1 << 20);
            sum += _buf[0];
        }
        return sum;
    }

    [BenchmarkCategory("Digest"), Benchmark(Description = "XXH3 page digests of 1 GiB in memory (4 KiB pages), one core")]
    public ulong DigestOnly()
    {
        ulong s = 0;
        var span = _sample.AsSpan();
        for (int off = 0; off < span.Length; off += PageGeometry.PageSize)
            s += PageDigest.Of((ulong)off, span.Slice(off, PageGeometry.PageSize));
        return s;
    }

    /// <summary>1 % of the pages (every 100th) get new bytes, the same pages each time, so each pre-dump differs from its parent there.</summary>
    [IterationSetup(Target = nameof(ContentPreDump))]
    public void Change1Percent()
    {
        for (int p = 0; p < OneGiBPages; p += 100)
            Ask($"fill 1 {p} 1 {_n + 1}");
    }

    [BenchmarkCategory("Digest"), Benchmark(Description = "pre-dump --tracker content of the 1 GiB process, 1 % changed, LZ4, 2 threads")]
    public ulong ContentPreDump()
    {
        string d = Path.Combine(RamRoot, $"pre{_n++}");
        _last = d;
        // LZ4 on every core, as `criu-sharp pre-dump --machine /proc` compresses on the real host.
        var r = Criu.PreDump(_host, new DumpOptions { Pid = _pid, ImagesDir = d, PrevImagesDir = "../parent", Tracker = TrackerKind.Content, PageStore = PageStoreOptions.Lz4() with { Parallelism = 2 } });
        if (r.Stats.PagesWritten > OneGiBPages / 50)
            throw new InvalidOperationException($"content tracker wrote {r.Stats.PagesWritten} pages for 1 % changed");
        return r.Stats.PagesWritten;
    }
}

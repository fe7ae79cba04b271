using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using CriuSharp.ImageFormat;

namespace CriuSharp.Bench;

/// <summary>
/// Page store speed and size against liblz4 itself on the same bytes (anchors are the Baseline
/// of each category, so BenchmarkDotNet prints our ratio to them):
///   Write: PagemapWriter (LZ4, zero-page detection, raw fallback, XXH3 per block) vs LZ4_compress_default.
///   Read:  PageReader over the whole range vs LZ4_decompress_safe of the same 64 KiB blocks.
/// Sizes (vs `lz4 -1` on the raw bytes) are printed once from GlobalSetup.
/// Targets: write and read ≥ 80 % of the anchor per core; size within 10 % of lz4 -1 for ≥ 64 KiB blocks.
/// </summary>
[Config(typeof(ImageFormatBenchmarks.InProcessShortConfig))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
[MemoryDiagnoser]
public unsafe class ImageFormatBenchmarks
{
    /// <summary>
    /// In-process: the bench's assembly name differs from its project name, which BDN's
    /// out-of-process project generator cannot map back; in-process needs no generated project.
    /// </summary>
    public sealed class InProcessShortConfig : ManualConfig
    {
        public InProcessShortConfig() =>
            AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance)
                .WithLaunchCount(1).WithWarmupCount(2).WithIterationCount(6));
    }

    private const int SamplePages = 8192; // 32 MiB
    private const int AnchorBlock = 64 * 1024;
    private const ulong Base = 0x7f00_0000_0000;

    private byte[] _sample = [];
    private byte[] _anchorOut = [];
    private int[] _anchorSizes = [];
    private byte[] _anchorPlain = [];
    private PagemapImage _map16 = null!;
    private byte[] _pages16 = [];
    private PagemapImage _map1 = null!;
    private byte[] _pages1 = [];
    private byte[] _readBuf = [];

    /// <summary>
    /// A process-like memory image: runs of zero pages (untouched heap, BSS), text (strings,
    /// config), pointer-rich structures (heap objects, page tables of a VM), and random bytes
    /// (compressed or encrypted data), in runs as they appear in real address spaces.
    /// </summary>
    public static byte[] BuildSample(int pages, int seed)
    {
        var rnd = new Random(seed);
        var data = new byte[pages * PageGeometry.PageSize];
        string[] words = ["the", "page", "dirty", "soft", "restore", "criu", "memory", "process", "checkpoint", "kernel", "{\"id\":", "null", "true", "/usr/lib/x86_64-linux-gnu/"];
        int p = 0;
        while (p < pages)
        {
            int run = Math.Min(pages - p, 1 + rnd.Next(32));
            int kind = rnd.Next(100);
            for (int i = 0; i < run; i++, p++)
            {
                var page = data.AsSpan(p * PageGeometry.PageSize, PageGeometry.PageSize);
                if (kind < 30)
                {
                    // zero
                }
                else if (kind < 55)
                {
                    int o = 0;
                    while (o < page.Length)
                    {
                        var w = words[rnd.Next(words.Length)];
                        for (int c = 0; c < w.Length && o < page.Length; c++) page[o++] = (byte)w[c];
                        if (o < page.Length) page[o++] = (byte)(rnd.Next(8) == 0 ? '\n' : ' ');
                    }
                }
                else if (kind < 85)
                {
                    ulong heap = 0x5555_5555_0000UL + (ulong)rnd.Next(1 << 12) * 4096;
                    for (int o = 0; o + 32 <= page.Length; o += 32)
                    {
                        BitConverter.TryWriteBytes(page.Slice(o), heap + (ulong)rnd.Next(1 << 14) * 16);
                        BitConverter.TryWriteBytes(page.Slice(o + 8), heap + (ulong)rnd.Next(1 << 14) * 16);
                        BitConverter.TryWriteBytes(page.Slice(o + 16), (ulong)rnd.Next(1000));
                        BitConverter.TryWriteBytes(page.Slice(o + 24), rnd.Next(4) == 0 ? (ulong)rnd.NextInt64() : 0UL);
                    }
                }
                else
                {
                    rnd.NextBytes(page);
                }
            }
        }
        return data;
    }

    [GlobalSetup]
    public void Setup()
    {
        _sample = BuildSample(SamplePages, 42);
        int blocks = _sample.Length / AnchorBlock;
        int bound = Interop.Lz4.CompressBound(AnchorBlock);
        _anchorOut = new byte[blocks * bound];
        _anchorSizes = new int[blocks];
        _anchorPlain = new byte[AnchorBlock];
        AnchorCompress();
        (_map16, _pages16) = WriteToMemory(PageStoreOptions.Lz4(blockPages: 16));
        (_map1, _pages1) = WriteToMemory(PageStoreOptions.Lz4(blockPages: 1));
        _readBuf = new byte[_sample.Length];
        PrintSizes();
    }

    private (PagemapImage, byte[]) WriteToMemory(PageStoreOptions options)
    {
        var ms = new MemoryStream();
        using var w = new PagemapWriter(ms, 1, options, leaveOpen: true);
        w.AddPresent(Base, _sample);
        w.Finish();
        var bytes = ImageFile.Serialize(ImageKind.Pagemap, w.PagemapMessages());
        return (PagemapImage.FromContents(ImageFile.Parse(bytes, "pagemap-1.img", ImageKind.Pagemap)), ms.ToArray());
    }

    private void PrintSizes()
    {
        long anchor = 0;
        foreach (var s in _anchorSizes) anchor += s;
        long lz4Cli = -1;
        var tmp = Path.Combine(Path.GetTempPath(), $"criu-sharp-bench-{Environment.ProcessId}.raw");
        try
        {
            File.WriteAllBytes(tmp, _sample);
            var psi = new ProcessStartInfo("lz4", ["-1", "-c", "-q", tmp]) { RedirectStandardOutput = true };
            using var p = Process.Start(psi)!;
            using var counter = new MemoryStream();
            p.StandardOutput.BaseStream.CopyTo(counter);
            p.WaitForExit();
            lz4Cli = counter.Length;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            // lz4 CLI missing: the size line says so.
        }
        finally
        {
            File.Delete(tmp);
        }
        Console.WriteLine($"// SIZE raw={_sample.Length} lz4-1(cli)={lz4Cli} lz4-64KiB-blocks={anchor} " +
            $"ours-lz4-64KiB={_pages16.Length} ours-lz4-4KiB={_pages1.Length} " +
            $"ours-64KiB/lz4-1={(lz4Cli > 0 ? (double)_pages16.Length / lz4Cli : double.NaN):0.000} " +
            $"ours-4KiB/lz4-1={(lz4Cli > 0 ? (double)_pages1.Length / lz4Cli : double.NaN):0.000}");
    }

    private void AnchorCompress()
    {
        int bound = Interop.Lz4.CompressBound(AnchorBlock);
        fixed (byte* src = _sample)
        fixed (byte* dst = _anchorOut)
        {
            for (int b = 0; b < _anchorSizes.Length; b++)
                _anchorSizes[b] = Interop.Lz4.CompressDefault(src + (long)b * AnchorBlock, dst + (long)b * bound, AnchorBlock, bound);
        }
    }

    [BenchmarkCategory("Write"), Benchmark(Baseline = true, Description = "liblz4 LZ4_compress_default, 64 KiB blocks, 1 thread")]
    public void Write_Lz4Anchor() => AnchorCompress();

    [BenchmarkCategory("Write"), Benchmark(Description = "PagemapWriter lz4 64 KiB blocks, 1 thread")]
    public long Write_Ours64K() => WritePages(PageStoreOptions.Lz4(blockPages: 16));

    [BenchmarkCategory("Write"), Benchmark(Description = "PagemapWriter lz4 4 KiB blocks, 1 thread")]
    public long Write_Ours4K() => WritePages(PageStoreOptions.Lz4(blockPages: 1));

    [BenchmarkCategory("Write"), Benchmark(Description = "PagemapWriter lz4 64 KiB blocks, 2 threads")]
    public long Write_Ours64K_2Threads() => WritePages(PageStoreOptions.Lz4(blockPages: 16) with { Parallelism = 2 });

    private long WritePages(PageStoreOptions options)
    {
        using var w = new PagemapWriter(Stream.Null, 1, options);
        w.AddPresent(Base, _sample);
        return (long)w.Finish().BytesStored;
    }

    [BenchmarkCategory("Read"), Benchmark(Baseline = true, Description = "liblz4 LZ4_decompress_safe, 64 KiB blocks")]
    public int Read_Lz4Anchor()
    {
        int bound = Interop.Lz4.CompressBound(AnchorBlock);
        int total = 0;
        fixed (byte* src = _anchorOut)
        fixed (byte* dst = _readBuf)
        {
            for (int b = 0; b < _anchorSizes.Length; b++)
                total += Interop.Lz4.DecompressSafe(src + (long)b * bound, dst + (long)b * AnchorBlock, _anchorSizes[b], AnchorBlock);
        }
        return total;
    }

    [BenchmarkCategory("Read"), Benchmark(Description = "PageReader all pages, lz4 64 KiB blocks")]
    public void Read_Ours64K() => ReadAll(_map16, _pages16);

    [BenchmarkCategory("Read"), Benchmark(Description = "PageReader all pages, lz4 4 KiB blocks")]
    public void Read_Ours4K() => ReadAll(_map1, _pages1);

    private void ReadAll(PagemapImage map, byte[] pages)
    {
        using var r = new PageReader(map, PagesSource.FromMemory(pages));
        r.Read(Base, _readBuf);
    }
}

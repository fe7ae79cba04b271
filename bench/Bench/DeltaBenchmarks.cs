using BenchmarkDotNet.Attributes;
using CriuSharp.ImageFormat;

namespace CriuSharp.Bench;

/// <summary>
/// Delta encoding of re-dirtied pages (<see cref="PageDelta"/>, QEMU's XBZRLE grammar) against
/// memcpy of the same bytes in the same run (the Baseline, so the Ratio column is memcpy time /
/// our time). 8192 non-zero pages of <see cref="ImageFormatBenchmarks.BuildSample"/> (text,
/// pointer-rich, random) each re-dirtied as a running program does: most pages get 1–8 words
/// rewritten, one in eight a stretch of 64–512 bytes, one in sixteen is rewritten whole.
/// Encode+decode = encode each page against its previous version, then apply the delta to a copy
/// of the previous version (what restore does to the parent's page). Target: ≥ 1 GB/s per core
/// of page bytes through encode+decode (32 MiB ÷ mean time).
/// </summary>
[Config(typeof(ImageFormatBenchmarks.InProcessShortConfig))]
[MemoryDiagnoser]
public class DeltaBenchmarks
{
    private const int Pages = 8192;
    private const int Ps = PageGeometry.PageSize;
    private byte[] _old = [];
    private byte[] _new = [];
    private byte[] _copy = [];
    private byte[] _delta = [];
    private byte[] _work = [];

    [GlobalSetup]
    public void Setup()
    {
        var sample = ImageFormatBenchmarks.BuildSample(Pages * 2, 42);
        _old = new byte[Pages * Ps];
        int n = 0;
        for (int p = 0; p < Pages * 2 && n < Pages; p++)
        {
            var page = sample.AsSpan(p * Ps, Ps);
            if (page.IndexOfAnyExcept((byte)0) >= 0)
                page.CopyTo(_old.AsSpan(n++ * Ps));
        }
        _new = (byte[])_old.Clone();
        var rnd = new Random(7);
        for (int p = 0; p < Pages; p++)
        {
            var page = _new.AsSpan(p * Ps, Ps);
            int kind = rnd.Next(16);
            if (kind == 0)
                rnd.NextBytes(page);
            else if (kind <= 2)
            {
                int len = rnd.Next(64, 513);
                rnd.NextBytes(page.Slice(rnd.Next(0, Ps - len), len));
            }
            else
                for (int w = rnd.Next(1, 9); w > 0; w--)
                    BitConverter.TryWriteBytes(page.Slice(rnd.Next(0, Ps / 8) * 8), (ulong)rnd.NextInt64());
        }
        _copy = new byte[Pages * Ps];
        _delta = new byte[Ps];
        _work = new byte[Ps];
        long total = 0;
        int overflow = 0;
        for (int p = 0; p < Pages; p++)
        {
            int len = PageDelta.Encode(_old.AsSpan(p * Ps, Ps), _new.AsSpan(p * Ps, Ps), _delta);
            if (len < 0) overflow++; else total += len;
        }
        Console.WriteLine($"// deltas: {total} B for {Pages - overflow} pages ({(double)total / (Pages - overflow):0.0} B/page), {overflow} overflows (delta ≥ 4 KiB)");
    }

    [Benchmark(Baseline = true, Description = "memcpy 32 MiB")]
    public void Memcpy() => _new.AsSpan().CopyTo(_copy);

    [Benchmark(Description = "XBZRLE encode 32 MiB")]
    public long Encode()
    {
        long total = 0;
        for (int p = 0; p < Pages; p++)
            total += PageDelta.Encode(_old.AsSpan(p * Ps, Ps), _new.AsSpan(p * Ps, Ps), _delta);
        return total;
    }

    [Benchmark(Description = "XBZRLE encode+decode 32 MiB")]
    public long EncodeDecode()
    {
        long total = 0;
        for (int p = 0; p < Pages; p++)
        {
            var old = _old.AsSpan(p * Ps, Ps);
            int len = PageDelta.Encode(old, _new.AsSpan(p * Ps, Ps), _delta);
            if (len < 0)
            {
                _new.AsSpan(p * Ps, Ps).CopyTo(_work); // sent whole
                continue;
            }
            old.CopyTo(_work);
            if (PageDelta.TryApply(_delta.AsSpan(0, len), _work) is not null)
                throw new InvalidOperationException("delta does not apply");
            total += len;
        }
        return total;
    }
}

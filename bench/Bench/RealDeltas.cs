using System.Globalization;
using CriuSharp.ImageFormat;
using Microsoft.Win32.SafeHandles;

namespace CriuSharp.Bench;

/// <summary>
/// <c>criu-sharp-bench real-deltas PID [iterations] [interval-ms]</c>: what delta encoding would
/// save on a real process's re-dirtied pages. It reads the process's private writable memory
/// through /proc/PID/mem (read only; the process is never stopped or written to) every interval,
/// takes the pages whose bytes changed since the previous read as that round's dirty set, and
/// stores them twice the way a pre-dump's page store would: LZ4 alone (64 KiB blocks), and with
/// each page that was also in the previous round's read sent as an XBZRLE delta when the delta
/// plus its entry cost is smaller than the page compressed alone — the same rule as the Dumper's
/// page sieve, with an unbounded cache. Sizes are the pages, deltas and pagemap files.
/// Pages written with unchanged contents are invisible here (the host has no soft-dirty), so
/// neither elision nor the bytes LZ4 alone would spend on them are counted.
/// </summary>
internal static class RealDeltas
{
    private const int Ps = PageGeometry.PageSize;
    private const int DeltaEntryCost = 24;

    public static int Run(string[] args)
    {
        int pid = int.Parse(args[0], CultureInfo.InvariantCulture);
        int iterations = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 10;
        int intervalMs = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 100;
        var prev = Snapshot(pid);
        long lz4Total = 0, deltaTotal = 0, dirtyTotal = 0, asDelta = 0;
        Console.WriteLine($"pid {pid}: {prev.Values.Sum(v => (long)v.Length) >> 20} MiB private writable, {iterations} rounds every {intervalMs} ms");
        Console.WriteLine("round  dirty pages  lz4 bytes  lz4+delta bytes  pages as deltas  saving");
        for (int it = 1; it <= iterations; it++)
        {
            Thread.Sleep(intervalMs);
            var cur = Snapshot(pid);
            var dirty = new List<(ulong Va, byte[] Page, byte[]? Old)>();
            foreach (var (start, bytes) in cur)
            {
                prev.TryGetValue(start, out var old);
                for (int off = 0; off < bytes.Length; off += Ps)
                {
                    var page = bytes.AsSpan(off, Ps);
                    bool had = old is not null && off + Ps <= old.Length;
                    if (had && page.SequenceEqual(old.AsSpan(off, Ps)))
                        continue;
                    dirty.Add((start + (ulong)off, page.ToArray(), had ? old!.AsSpan(off, Ps).ToArray() : null));
                }
            }
            long a = Store(dirty, delta: false, out _), b = Store(dirty, delta: true, out int nd);
            lz4Total += a; deltaTotal += b; dirtyTotal += dirty.Count; asDelta += nd;
            Console.WriteLine($"{it,5}  {dirty.Count,11}  {a,9}  {b,15}  {nd,15}  {(a == 0 ? 0 : 100.0 * (a - b) / a),5:0.0} %");
            prev = cur;
        }
        Console.WriteLine($"total  {dirtyTotal,11}  {lz4Total,9}  {deltaTotal,15}  {asDelta,15}  {(lz4Total == 0 ? 0 : 100.0 * (lz4Total - deltaTotal) / lz4Total),5:0.0} %");
        return 0;
    }

    private static long Store(List<(ulong Va, byte[] Page, byte[]? Old)> dirty, bool delta, out int deltas)
    {
        deltas = 0;
        var options = PageStoreOptions.Lz4(blockPages: 16);
        using var pages = new MemoryStream();
        using var w = new PagemapWriter(pages, 1, options, leaveOpen: true);
        using var est = new PageSizeEstimator(options);
        var buf = new byte[Ps];
        var run = new List<byte>();
        ulong runVa = 0, next = ulong.MaxValue;
        void FlushRun()
        {
            if (run.Count > 0) w.AddPresent(runVa, run.ToArray());
            run.Clear();
        }
        foreach (var (va, page, old) in dirty)
        {
            if (delta && old is not null)
            {
                int stored = est.StoredSize(page);
                int limit = stored - DeltaEntryCost;
                int len = limit <= 0 ? -1 : PageDelta.Encode(old, page, buf.AsSpan(0, Math.Min(limit, Ps)));
                if (len >= 0 && len < limit)
                {
                    FlushRun();
                    w.AddDelta(va, buf.AsSpan(0, len), PageDelta.Checksum(page));
                    deltas++;
                    next = ulong.MaxValue;
                    continue;
                }
            }
            if (va != next) FlushRun();
            if (run.Count == 0) runVa = va;
            run.AddRange(page);
            next = va + Ps;
        }
        FlushRun();
        w.Finish();
        long meta = ImageFile.Serialize(ImageKind.Pagemap, w.PagemapMessages()).Length;
        return pages.Length + meta + w.DeltaBytes.Length;
    }

    /// <summary>Private writable mappings (heap, anonymous, stack; not file-backed data) → their bytes.</summary>
    private static Dictionary<ulong, byte[]> Snapshot(int pid)
    {
        var result = new Dictionary<ulong, byte[]>();
        using var mem = File.OpenHandle($"/proc/{pid}/mem", FileMode.Open, FileAccess.Read);
        foreach (var line in File.ReadAllLines($"/proc/{pid}/maps"))
        {
            var f = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            if (f.Length < 5 || f[1] != "rw-p")
                continue;
            string name = f.Length > 5 ? f[5].Trim() : "";
            if (name.StartsWith('/') || name is "[vvar]" or "[vsyscall]")
                continue;
            var range = f[0].Split('-');
            ulong s = ulong.Parse(range[0], NumberStyles.HexNumber), e = ulong.Parse(range[1], NumberStyles.HexNumber);
            if (e - s > 1UL << 30)
                continue;
            var bytes = new byte[e - s];
            if (TryRead(mem, s, bytes))
                result[s] = bytes;
        }
        return result;
    }

    private static bool TryRead(SafeFileHandle mem, ulong va, byte[] dst)
    {
        try
        {
            int done = 0;
            while (done < dst.Length)
            {
                int n = RandomAccess.Read(mem, dst.AsSpan(done), (long)va + done);
                if (n <= 0) return false;
                done += n;
            }
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }
}

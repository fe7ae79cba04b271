using System.Diagnostics;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Cli;

/// <summary>
/// Restores thousands of damaged copies of a real image chain and demands, of each, either a
/// restore identical to the original (registers, mappings, bytes, self-check) or a typed one-line
/// error — never another exception, a hang, unbounded allocation, or different bytes in silence.
///
/// Chain A (the victim): pre0 (lz4) → pre1 (raw pages) → dump (lz4, 16 KiB blocks) of a small
/// writer. Chain B: another writer with the same pid, the source of "files from another dump" and
/// of parent links to the wrong tree. Each variant applies one or two mutations to A in place,
/// restores A/dump into a fresh in-memory kernel, then puts back every path it touched, so a
/// variant costs a few file writes and one small restore. The variant's mutations come from
/// (seed, index) alone: any failure is reproduced by its number.
/// </summary>
public static class FuzzImages
{
    public sealed record Options
    {
        public ulong Seed { get; init; } = 1;
        public int Count { get; init; } = 10_000;
        public TimeSpan PerVariantTimeout { get; init; } = TimeSpan.FromSeconds(10);
        /// <summary>Bytes one variant may allocate (a restore of this chain allocates a few MiB).</summary>
        public long AllocationCap { get; init; } = 256L << 20;
        /// <summary>Where the chains are written; a tmpfs (/dev/shm) keeps fsync cheap.</summary>
        public string? WorkDir { get; init; }
        public int MaxFailures { get; init; } = 20;
        public Action<string>? Log { get; init; }
    }

    public sealed class Report
    {
        public int Variants { get; set; }
        public int Restored { get; set; }
        public int TypedErrors { get; set; }
        public long MaxAllocated { get; set; }
        public string MaxAllocatedBy { get; set; } = "";
        public TimeSpan Elapsed { get; set; }
        public List<string> Failures { get; } = [];
        public SortedDictionary<string, (int Restored, int Errors)> ByMutation { get; } = new(StringComparer.Ordinal);
        public SortedDictionary<string, int> ErrorKinds { get; } = new(StringComparer.Ordinal);
        public override string ToString() =>
            $"{Variants} variants: {Restored} restored identical, {TypedErrors} typed errors, {Failures.Count} failures; " +
            $"max {MaxAllocated >> 20} MiB allocated by one variant ({MaxAllocatedBy}); {Elapsed.TotalSeconds:0.0} s";
    }

    private const int Pid = 1000;

    public static Report Run(Options o)
    {
        string root = o.WorkDir ?? Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), $"criu-sharp-fuzz-{Guid.NewGuid():N}");
        bool ownRoot = o.WorkDir is null;
        Directory.CreateDirectory(root);
        try
        {
            var fx = Fixture.Build(root);
            return RunVariants(o, fx);
        }
        finally
        {
            if (ownRoot)
                try { Directory.Delete(root, true); } catch (IOException) { }
        }
    }

    /// <summary>The pristine chains and the oracle.</summary>
    private sealed class Fixture
    {
        public required string Root;
        public required List<FuzzSupport.TaskImage> Expected;
        public required KernelConfig Config;
        /// <summary>Relative path → contents (files) for everything under A and B.</summary>
        public readonly Dictionary<string, byte[]> Files = new(StringComparer.Ordinal);
        /// <summary>Relative path → link target.</summary>
        public Dictionary<string, string> Links { get; } = new(StringComparer.Ordinal);
        public string[] ASets = ["A/pre0", "A/pre1", "A/dump"];

        public string Abs(string rel) => Path.Combine(Root, rel);

        public static Fixture Build(string root)
        {
            var ka = FuzzSupport.NewKernel();
            var host = new LiveHost(ka);
            FuzzSupport.Spawn(ka, FuzzSupport.SmallWorkload(7));
            host.Advance(5_000_000);
            Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = Pid, ImagesDir = Path.Combine(root, "A/pre0"), PageStore = PageStoreOptions.Lz4() });
            host.Advance(3_000_000);
            Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = Pid, ImagesDir = Path.Combine(root, "A/pre1"), PrevImagesDir = "../pre0", PageStore = PageStoreOptions.Raw });
            host.Advance(3_000_000);
            var expected = FuzzSupport.Snapshot(ka, Pid);
            Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = Pid, ImagesDir = Path.Combine(root, "A/dump"), PrevImagesDir = "../pre1", TrackMem = true, PageStore = PageStoreOptions.Lz4(4) });

            var kb = FuzzSupport.NewKernel();
            var hb = new LiveHost(kb);
            FuzzSupport.Spawn(kb, FuzzSupport.SmallWorkload(8));
            hb.Advance(4_000_000);
            Criu.PreDump(hb.AsKernelApi(), new DumpOptions { Pid = Pid, ImagesDir = Path.Combine(root, "B/pre0"), PageStore = PageStoreOptions.Lz4() });
            hb.Advance(2_000_000);
            Criu.Dump(hb.AsKernelApi(), new DumpOptions { Pid = Pid, ImagesDir = Path.Combine(root, "B/dump"), PrevImagesDir = "../pre0", TrackMem = true, PageStore = PageStoreOptions.Raw });

            var fx = new Fixture { Root = root, Expected = expected, Config = ka.Config };
            foreach (var set in new[] { "A/pre0", "A/pre1", "A/dump", "B/pre0", "B/dump" })
                foreach (var e in new DirectoryInfo(Path.Combine(root, set)).EnumerateFileSystemInfos())
                {
                    string rel = set + "/" + e.Name;
                    if (e.LinkTarget is { } target) fx.Links[rel] = target;
                    else if (e.Name != ImageNames.StatsRestore) fx.Files[rel] = File.ReadAllBytes(e.FullName);
                }
            // The unmutated chain must restore, or every verdict below would mean nothing.
            var (outcome, detail, _) = RestoreOnce(fx);
            if (outcome != Outcome.Restored)
                throw new InvalidOperationException($"the pristine chain does not restore: {detail}");
            return fx;
        }
    }

    private enum Outcome { Restored, TypedError, Failure }

    private static (Outcome, string Detail, string? ErrorKind) RestoreOnce(Fixture fx)
    {
        var dest = new Kernel(fx.Config);
        try
        {
            Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = fx.Abs("A/dump") });
        }
        catch (Exception ex)
        {
            string? bad = FuzzSupport.CheckTypedError(ex);
            if (bad is not null)
                return (Outcome.Failure, bad, null);
            return (Outcome.TypedError, ex.Message, ErrorKind(ex));
        }
        string? diff = FuzzSupport.Compare(fx.Expected, dest) ?? FuzzSupport.SelfCheck(dest, Pid);
        return diff is null ? (Outcome.Restored, "", null) : (Outcome.Failure, "silent mis-restore: " + diff, null);
    }

    /// <summary>The message with paths and numbers taken out, to count the kinds of error seen.</summary>
    private static string ErrorKind(Exception ex)
    {
        var inner = ex is DumperException { InnerException: ImageFormatException i } ? i : ex;
        string m = inner is ImageFormatException f ? f.Problem : inner.Message;
        m = System.Text.RegularExpressions.Regex.Replace(m, @"(0x[0-9a-f]+|\d+|'[^']*'|/\S+)", "#");
        return $"{inner.GetType().Name}: {(m.Length > 70 ? m[..70] : m)}";
    }

    private static Report RunVariants(Options o, Fixture fx)
    {
        var report = new Report();
        var wall = Stopwatch.StartNew();
        // The variants run on a worker thread so that a hang is seen (the watchdog below) and
        // allocations are counted for that thread alone, whatever else the process does.
        long current = -1, started = 0;
        Exception? crashed = null;
        var worker = new Thread(() =>
        {
            try
            {
                for (int i = 0; i < o.Count && report.Failures.Count < o.MaxFailures; i++)
                {
                    Volatile.Write(ref started, Stopwatch.GetTimestamp());
                    Volatile.Write(ref current, i);
                    RunOne(o, fx, i, report);
                }
            }
            catch (Exception ex)
            {
                crashed = ex;
            }
            Volatile.Write(ref current, long.MaxValue);
        }, 16 << 20)
        { IsBackground = true, Name = "fuzz images" };
        worker.Start();
        while (!worker.Join(50))
        {
            long i = Volatile.Read(ref current);
            if (i >= 0 && i != long.MaxValue && Stopwatch.GetElapsedTime(Volatile.Read(ref started)) > o.PerVariantTimeout
                && Volatile.Read(ref current) == i)
            {
                lock (report)
                    report.Failures.Add($"variant {i} ({Describe(o.Seed, (int)i)}): hang, no result after {o.PerVariantTimeout.TotalSeconds} s");
                break; // the worker is stuck in the restore; the report says so and the run stops
            }
        }
        if (crashed is not null)
            report.Failures.Add($"fuzzer itself failed: {crashed}");
        report.Elapsed = wall.Elapsed;
        return report;
    }

    private static void RunOne(Options o, Fixture fx, int index, Report report)
    {
        var rng = new Random(unchecked((int)(o.Seed * 0x9E3779B97F4A7C15UL >> 33) ^ index * 7919));
        var touched = new HashSet<string>(StringComparer.Ordinal);
        var names = new List<string>();
        int n = rng.Next(10) == 0 ? 2 : 1;
        for (int m = 0; m < n; m++)
            names.Add(Mutate(fx, rng, touched));
        string label = string.Join('+', names.Select(x => x.Split(' ')[0]));
        long before = GC.GetAllocatedBytesForCurrentThread();
        var (outcome, detail, kind) = RestoreOnce(fx);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        touched.Add("A/dump/" + ImageNames.StatsRestore);
        Repair(fx, touched);
        lock (report)
        {
            report.Variants++;
            if (allocated > report.MaxAllocated)
            {
                report.MaxAllocated = allocated;
                report.MaxAllocatedBy = $"variant {index}: {string.Join("; ", names)}";
            }
            report.ByMutation.TryGetValue(label, out var c);
            if (outcome == Outcome.Restored) { report.Restored++; c.Restored++; }
            else if (outcome == Outcome.TypedError)
            {
                report.TypedErrors++;
                c.Errors++;
                report.ErrorKinds[kind!] = report.ErrorKinds.GetValueOrDefault(kind!) + 1;
            }
            else
                report.Failures.Add($"variant {index} ({string.Join("; ", names)}): {detail}");
            report.ByMutation[label] = c;
            if (allocated > o.AllocationCap)
                report.Failures.Add($"variant {index} ({string.Join("; ", names)}): allocated {allocated >> 20} MiB (cap {o.AllocationCap >> 20} MiB)");
        }
        if ((index + 1) % 1000 == 0)
            o.Log?.Invoke($"{index + 1} variants, {report.Failures.Count} failures");
    }

    /// <summary>The mutations of one variant, for a failure report.</summary>
    public static string Describe(ulong seed, int index) => $"seed {seed} variant {index}";

    /// <summary>Applies one mutation to chain A; returns its description ("kind detail").</summary>
    private static string Mutate(Fixture fx, Random rng, HashSet<string> touched)
    {
        var aFiles = fx.Files.Keys.Where(k => k.StartsWith("A/", StringComparison.Ordinal)).Order(StringComparer.Ordinal).ToArray();
        // Weighted towards the files nothing but the reader guards: pages and pagemaps.
        string PickFile()
        {
            if (rng.Next(2) == 0)
            {
                var hot = aFiles.Where(f => Path.GetFileName(f).StartsWith("page", StringComparison.Ordinal)).ToArray();
                return hot[rng.Next(hot.Length)];
            }
            return aFiles[rng.Next(aFiles.Length)];
        }
        string set = fx.ASets[rng.Next(fx.ASets.Length)];
        int kind = rng.Next(100);
        if (kind < 30)
        {
            string f = PickFile();
            var b = Current(fx, f);
            if (b.Length == 0) return Truncate(fx, f, 0, touched);
            int flips = 1 + rng.Next(3);
            var pos = new List<int>();
            for (int i = 0; i < flips; i++)
            {
                int p = rng.Next(b.Length);
                b[p] ^= (byte)(1 << rng.Next(8));
                pos.Add(p);
            }
            Put(fx, f, b, touched);
            return $"bitflip {f} @{string.Join(',', pos)}";
        }
        if (kind < 42)
        {
            string f = PickFile();
            var b = Current(fx, f);
            return Truncate(fx, f, b.Length == 0 ? 0 : rng.Next(b.Length), touched);
        }
        if (kind < 54)
        {
            // A length or count made huge: protobuf varints, the 4-byte entry sizes of CRIU's
            // framing, LZ4 block headers.
            string f = PickFile();
            var b = Current(fx, f);
            if (b.Length < 4) return Truncate(fx, f, 0, touched);
            int p = rng.Next(Math.Min(b.Length - 3, 64));
            uint v = rng.Next(4) switch { 0 => 0xFFFFFFFF, 1 => 0x7FFFFFFF, 2 => BitConverter.ToUInt32(b, p) * 1000 + 1, _ => 0x00100000 };
            if (rng.Next(2) == 0)
                BitConverter.TryWriteBytes(b.AsSpan(p), v);
            else
                for (int i = 0; i < 4 && p + i < b.Length; i++) b[p + i] = (byte)(i < 3 ? 0xFF : 0x0F); // a 5-byte varint near 2^32
            Put(fx, f, b, touched);
            return $"inflate {f} @{p}";
        }
        if (kind < 58)
        {
            string f = PickFile();
            var b = Current(fx, f);
            var extra = new byte[1 + rng.Next(4096)];
            rng.NextBytes(extra);
            Put(fx, f, [.. b, .. extra], touched);
            return $"append {f} +{extra.Length}";
        }
        if (kind < 64)
        {
            string f = aFiles[rng.Next(aFiles.Length)];
            Remove(fx, f, touched);
            return $"missing {f}";
        }
        if (kind < 70)
        {
            var inSet = aFiles.Where(x => x.StartsWith(set + "/", StringComparison.Ordinal)).ToArray();
            string f1 = inSet[rng.Next(inSet.Length)], f2 = inSet[rng.Next(inSet.Length)];
            var b1 = Current(fx, f1);
            var b2 = Current(fx, f2);
            Put(fx, f1, b2, touched);
            Put(fx, f2, b1, touched);
            return $"swap {f1} {f2}";
        }
        if (kind < 80)
        {
            // The same name from another dump: chain B, or another set of chain A.
            string f = PickFile();
            string name = Path.GetFileName(f);
            var candidates = fx.Files.Keys.Where(k => Path.GetFileName(k) == name && k != f).Order(StringComparer.Ordinal).ToArray();
            if (candidates.Length == 0) return Truncate(fx, f, 0, touched);
            string src = candidates[rng.Next(candidates.Length)];
            Put(fx, f, fx.Files[src], touched);
            return $"foreign {f} from {src}";
        }
        if (kind < 92)
        {
            string link = set == "A/pre0" ? "A/pre1/parent" : set + "/parent";
            string target = rng.Next(8) switch
            {
                0 => ".",                      // itself
                1 => "../dump",                // a loop through the chain
                2 => "../../B/pre0",           // another tree
                3 => "../../B/dump",
                4 => "../gone",                // dangling
                5 => "parent",                 // a symlink to itself
                6 => "../dump/core-1000.img",  // a file
                _ => "",                       // no parent at all
            };
            if (rng.Next(3) == 0 && set != "A/dump")
                link = "A/pre0/parent"; // pre0 had no parent: give it one (a loop back to the top)
            Remove(fx, link, touched);
            if (target.Length > 0)
                File.CreateSymbolicLink(fx.Abs(link), target);
            return $"parent {link} -> '{target}'";
        }
        if (kind < 96)
        {
            string marker = set + "/" + ImageNames.IncompleteMarker;
            Put(fx, marker, "interrupted\n"u8.ToArray(), touched);
            return $"incomplete {set}";
        }
        {
            // An extra pagemap/pages pair for a pid nobody restores, and garbage where a file was.
            string f = set + "/pages-9.img";
            var b = new byte[rng.Next(8192)];
            rng.NextBytes(b);
            Put(fx, f, b, touched);
            return $"stray {f}";
        }
    }

    private static string Truncate(Fixture fx, string f, int length, HashSet<string> touched)
    {
        Put(fx, f, Current(fx, f).AsSpan(0, length).ToArray(), touched);
        return $"truncate {f} to {length}";
    }

    private static byte[] Current(Fixture fx, string rel)
    {
        var p = fx.Abs(rel);
        return File.Exists(p) ? File.ReadAllBytes(p) : [];
    }

    private static void Put(Fixture fx, string rel, byte[] bytes, HashSet<string> touched)
    {
        Remove(fx, rel, touched);
        File.WriteAllBytes(fx.Abs(rel), bytes);
    }

    private static void Remove(Fixture fx, string rel, HashSet<string> touched)
    {
        touched.Add(rel);
        var p = fx.Abs(rel);
        var info = new FileInfo(p);
        if (info.LinkTarget is not null || File.Exists(p))
            File.Delete(p);
        else if (Directory.Exists(p))
            Directory.Delete(p, true);
    }

    /// <summary>Puts every touched path back as the fixture recorded it (or removes it).</summary>
    private static void Repair(Fixture fx, HashSet<string> touched)
    {
        foreach (var rel in touched)
        {
            var p = fx.Abs(rel);
            if (new FileInfo(p).LinkTarget is not null || File.Exists(p))
                File.Delete(p);
            if (fx.Files.TryGetValue(rel, out var bytes))
                File.WriteAllBytes(p, bytes);
            else if (fx.Links.TryGetValue(rel, out var target))
                File.CreateSymbolicLink(p, target);
        }
    }
}

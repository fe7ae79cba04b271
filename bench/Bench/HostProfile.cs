using System.Diagnostics;
using System.Globalization;

namespace CriuSharp.Bench;

/// <summary>
/// <c>criu-sharp-bench host-profile OP [n]</c>: runs one of the real-host benchmarks' operations
/// (loop, dump, pre, read) or a probe (freeze: freeze and thaw; readSIZE[-Nthreads][@OFFSET]: the
/// 1 GiB read in pieces of SIZE (64k, 128k, 1m, ...) on N threads into a buffer OFFSET bytes past
/// a page boundary; rdSIZE...: the same, each piece digested as the content tracker does) n
/// times against the
/// same 1 GiB process outside BenchmarkDotNet, and prints each run's wall time, the CPU time
/// (user+sys) this process spent on it, what the JIT compiled and the GCs meanwhile, so a profiler
/// (perf record -p) can be pointed at exactly one kind of operation and a loaded machine's runs
/// still be compared by CPU time.
/// </summary>
internal static class HostProfile
{
    public static int Run(string[] args)
    {
        string what = args.Length > 0 ? args[0] : "dump";
        int n = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 5;
        using var b = new HostBenchmarks();
        b.Setup();
        Action op = what switch
        {
            "loop" => () => b.ReadAndCompress(),
            "dump" => () => b.RealDump(),
            "pre" => () => b.ContentPreDump(),
            "read" => () => b.ReadOnce(),
            "freeze" => () => b.FreezeThaw(),
            _ when Probe(what) is { } probe => () => probe(b),
            _ => throw new ArgumentException($"unknown operation {what}"),
        };
        var self = Process.GetCurrentProcess();
        Console.WriteLine($"pid {Environment.ProcessId}: {what} x{n}");
        for (int i = 0; i < n; i++)
        {
            if (what == "pre")
                b.Change1Percent();
            self.Refresh();
            var cpu0 = self.TotalProcessorTime;
            long jitMethods0 = System.Runtime.JitInfo.GetCompiledMethodCount();
            var jit0 = System.Runtime.JitInfo.GetCompilationTime();
            int g0 = GC.CollectionCount(0), g2 = GC.CollectionCount(2);
            var pause0 = GC.GetTotalPauseDuration();
            var sw = Stopwatch.StartNew();
            op();
            sw.Stop();
            self.Refresh();
            var cpu = self.TotalProcessorTime - cpu0;
            if (what is "dump" or "pre")
                b.DeleteLastImages();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{what} {i}: wall {sw.Elapsed.TotalMilliseconds:F1} ms  cpu {cpu.TotalMilliseconds:F1} ms  jit {System.Runtime.JitInfo.GetCompiledMethodCount() - jitMethods0} methods {(System.Runtime.JitInfo.GetCompilationTime() - jit0).TotalMilliseconds:F1} ms  gc {GC.CollectionCount(0) - g0}/{GC.CollectionCount(2) - g2} pause {(GC.GetTotalPauseDuration() - pause0).TotalMilliseconds:F1} ms"));
        }
        return 0;
    }

    /// <summary>readSIZE[-Nthreads][@OFFSET] and rdSIZE[-Nthreads][@OFFSET] (SIZE: a number with k or m), or null.</summary>
    private static Action<HostBenchmarks>? Probe(string what)
    {
        var m = System.Text.RegularExpressions.Regex.Match(what, "^(read|rd)([0-9]+)([km])(?:-([0-9]+)threads)?(?:@([0-9]+))?$");
        if (!m.Success)
            return null;
        int piece = int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture) << (m.Groups[3].Value == "k" ? 10 : 20);
        int threads = m.Groups[4].Success ? int.Parse(m.Groups[4].Value, CultureInfo.InvariantCulture) : 1;
        int offset = m.Groups[5].Success ? int.Parse(m.Groups[5].Value, CultureInfo.InvariantCulture) : 0;
        bool digest = m.Groups[1].Value == "rd";
        return b => b.ReadPieces(piece, threads, offset, digest);
    }
}

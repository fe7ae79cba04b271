using System.Diagnostics;
using System.Globalization;

namespace CriuSharp.Bench;

/// <summary>
/// <c>criu-sharp-bench host-profile OP [n]</c>: runs one of the real-host benchmarks' operations
/// (loop, dump, pre, read) or a probe (freeze: freeze and thaw; read128k, read1m-2threads,
/// read128k-2threads: the 1 GiB read in other piece sizes and thread counts) n times against the
/// same 1 GiB process outside BenchmarkDotNet, and prints each run's wall time, the CPU time
/// (user+sys) this process spent on it and what the JIT compiled meanwhile, so a profiler
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
            "read128k" => () => b.ReadPieces(128 << 10, 1),
            "read1m-2threads" => () => b.ReadPieces(1 << 20, 2),
            "read128k-2threads" => () => b.ReadPieces(128 << 10, 2),
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
            var sw = Stopwatch.StartNew();
            op();
            sw.Stop();
            self.Refresh();
            var cpu = self.TotalProcessorTime - cpu0;
            if (what is "dump" or "pre")
                b.DeleteLastImages();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{what} {i}: wall {sw.Elapsed.TotalMilliseconds:F1} ms  cpu {cpu.TotalMilliseconds:F1} ms  jit {System.Runtime.JitInfo.GetCompiledMethodCount() - jitMethods0} methods {(System.Runtime.JitInfo.GetCompilationTime() - jit0).TotalMilliseconds:F1} ms"));
        }
        return 0;
    }
}

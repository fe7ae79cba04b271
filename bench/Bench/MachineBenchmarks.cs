using System.Diagnostics;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.Bench;

/// <summary>
/// The fixed cost of one command on a machine directory holding 1 GiB of written memory
/// (target: under 0.3 s). Anchor: the same executable doing nothing with a machine
/// (<c>criu-sharp --version</c>), so the ratio shows what the machine adds to a command.
///   open+save     load the state, map the frames file, save with nothing changed (in-process)
///   ps            a whole `criu-sharp ps` process on that machine
/// </summary>
[Config(typeof(ImageFormatBenchmarks.InProcessShortConfig))]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class MachineBenchmarks
{
    private string _dir = "";
    private string _cli = "";

    [GlobalSetup]
    public void Setup()
    {
        _dir = Path.Combine(Path.GetTempPath(), "criu-sharp-bench-machine");
        if (Directory.Exists(_dir))
            Directory.Delete(_dir, true);
        using (var m = SimMachine.Create(_dir, new KernelConfig { MemoryBytes = 4L << 30, Thp = ThpMode.Never }, TimeSpan.FromSeconds(10)))
        {
            var t = m.Kernel.Spawn("big");
            ulong a = (ulong)t.Mmap(0, 1UL << 30, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous).OrThrow("mmap");
            var chunk = new byte[1 << 20];
            var rnd = new Random(1);
            for (ulong off = 0; off < 1UL << 30; off += (ulong)chunk.Length)
            {
                rnd.NextBytes(chunk);
                t.Write(a + off, chunk).OrThrow("write");
            }
            m.Save();
        }
        _cli = Path.Combine(AppContext.BaseDirectory, "..", "..", "Cli", "release", "criu-sharp.dll");
        if (!File.Exists(_cli))
            _cli = Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        Console.WriteLine($"// machine with 1 GiB written: {new FileInfo(Path.Combine(_dir, SimMachine.FramesFileName)).Length >> 20} MiB frames file; cli {_cli} {(File.Exists(_cli) ? "found" : "missing (build src/Cli -c Release)")}");
    }

    [GlobalCleanup]
    public void Cleanup() => Directory.Delete(_dir, true);

    [BenchmarkCategory("command"), Benchmark(Baseline = true)]
    public int Process_Version() => RunCli("--version");

    [BenchmarkCategory("command"), Benchmark]
    public int Process_Ps() => RunCli("ps", "--machine", _dir);

    [BenchmarkCategory("command"), Benchmark]
    public long InProcess_OpenAndSave()
    {
        using var m = SimMachine.Open(_dir, TimeSpan.FromSeconds(10));
        m.Save();
        return m.Generation;
    }

    private int RunCli(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(_cli);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        p.StandardOutput.ReadToEnd();
        p.StandardError.ReadToEnd();
        p.WaitForExit();
        return p.ExitCode;
    }
}

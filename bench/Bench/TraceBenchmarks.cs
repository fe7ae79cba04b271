using BenchmarkDotNet.Attributes;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Workloads;
using CriuSharp.Traces;

namespace CriuSharp.Bench;

/// <summary>
/// Replay speed of a trace: one sample that rewrites 64 MiB of recorded pages (16,384 pages, LZ4
/// images with zero-fill:50% contents, so half of every page is data), applied to a replaying
/// process through the simulated MMU (soft-dirty armed, so every page takes its write fault).
/// Anchor: memcpy of the same 64 MiB between two buffers. Target: replay ≥ 1 GB/s of recorded page
/// writes, i.e. ratio to memcpy ≥ 0.15 on this machine. The replay's time includes reading and
/// decompressing the sample's pages from its images, as a replay must.
/// </summary>
[Config(typeof(ImageFormatBenchmarks.InProcessShortConfig))]
public class TraceBenchmarks
{
    private const int Pages = 16384;
    private string _dir = "";
    private byte[] _from = [], _to = [];
    private Kernel _k = null!;
    private SimTask _t = null!;

    [GlobalSetup]
    public void Setup()
    {
        TraceFile.Register();
        _dir = Path.Combine(Path.GetTempPath(), $"trace-bench-{Environment.ProcessId}");
        Directory.CreateDirectory(_dir);
        // The recorded program: 64 MiB prefilled, then a sequential sweep that rewrites every page
        // between the two samples.
        string wl = Path.Combine(_dir, "sweep.json");
        File.WriteAllText(wl, """
            { "processes": [ { "name": "sweep", "mappings": [ { "name": "d", "size": "64MiB" } ],
              "behaviour": { "type": "sequential", "pages_per_second": 1000000, "prefill": true, "content": "zero-fill:50%" } } ] }
            """);
        var k = new Kernel(new KernelConfig { MemoryBytes = 2L << 30, Thp = ThpMode.Never });
        var host = new LiveHost(k);
        int pid = WorkloadApi.Spawn(k, wl)[0].Pid;
        string trace = Path.Combine(_dir, "trace");
        Recorder.Record(RecordTarget.Simulated(host, "bench"), new RecordOptions { Pid = pid, Output = trace, IntervalNs = 20_000_000, ForNs = 20_000_000 });
        File.WriteAllText(Path.Combine(_dir, "replay.json"), """{ "processes": [ { "behaviour": { "type": "trace", "path": "trace", "loop": true } } ] }""");
        _from = new byte[Pages * 4096L];
        _to = new byte[Pages * 4096L];
        Random.Shared.NextBytes(_from);
    }

    [IterationSetup(Target = nameof(Replay))]
    public void SpawnReplay()
    {
        _k = new Kernel(new KernelConfig { MemoryBytes = 2L << 30, Thp = ThpMode.Never });
        _t = WorkloadApi.Spawn(_k, Path.Combine(_dir, "replay.json"))[0];
        _k.Proc.ClearRefs(_t.Pid, "4");
    }

    // Same job settings as the replay (one invocation per iteration), so BenchmarkDotNet prints the ratio.
    [IterationSetup(Target = nameof(Memcpy))]
    public void NoSetup() { }

    [Benchmark(Baseline = true, Description = "memcpy 64 MiB")]
    public void Memcpy() => _from.AsSpan().CopyTo(_to);

    [Benchmark(Description = "replay one sample rewriting 64 MiB")]
    public long Replay() => WorkloadApi.RunSteps(_t, 1);

    [GlobalCleanup]
    public void Cleanup() => Directory.Delete(_dir, true);
}

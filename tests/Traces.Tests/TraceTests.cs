using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Workloads;
using Xunit;

namespace CriuSharp.Traces.Tests;

/// <summary>Record a simulated process, replay the trace in another kernel, and check both against each other.</summary>
public sealed class TraceTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "criu-sharp-trace-tests", Guid.NewGuid().ToString("N"));

    public TraceTests()
    {
        Directory.CreateDirectory(_dir);
        TraceFile.Register();
    }

    public void Dispose() => Directory.Delete(_dir, true);

    private static Kernel NewKernel() =>
        new(new KernelConfig { Arch = SimKernel.Arch.ArchProfile.Parse("x86_64"), Version = KernelVersion.Parse("modern"), MemoryBytes = 1L << 30, SwapBytes = 64L << 20 });

    /// <summary>A churn workload (writes, munmap + mmap, mremap, mprotect, DONTNEED) over 2 MiB: every kind of VMA change.</summary>
    private const string ChurnWorkload = """
        { "seed": 7, "processes": [ { "name": "churny",
          "mappings": [ { "name": "arena", "size": "2MiB" } ],
          "behaviour": { "type": "churn", "slot_size": 16, "ops_per_second": 20000 } } ] }
        """;

    private string Write(string name, string text)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    private (string Trace, RecordResult Result) RecordChurn(ulong samples = 6, ulong intervalMs = 10, string workload = ChurnWorkload)
    {
        var k = NewKernel();
        var host = new LiveHost(k);
        var t = WorkloadApi.Spawn(k, Write("churn.json", workload))[0];
        host.Advance(5_000_000);
        string trace = Path.Combine(_dir, "trace-" + Guid.NewGuid().ToString("N")[..6]);
        var r = Recorder.Record(RecordTarget.Simulated(host, "test"), new RecordOptions
        {
            Pid = t.Pid,
            Output = trace,
            IntervalNs = intervalMs * 1_000_000,
            ForNs = (samples - 1) * intervalMs * 1_000_000,
        });
        return (trace, r);
    }

    private (Kernel Kernel, LiveHost Host, SimTask Task) Replay(string trace, string extra = "")
    {
        var k = NewKernel();
        var host = new LiveHost(k);
        string wl = Write("replay-" + Guid.NewGuid().ToString("N")[..6] + ".json",
            $$"""{ "processes": [ { "name": "replay", "behaviour": { "type": "trace", "path": "{{trace}}"{{extra}} } } ] }""");
        var t = WorkloadApi.Spawn(k, wl)[0];
        return (k, host, t);
    }

    [Fact]
    public void Record_WritesAChainOfPreDumpsAndAnIndex()
    {
        var (trace, r) = RecordChurn();
        Assert.Equal(6, r.Samples);
        Assert.False(r.Index.EndedEarly);
        var f = TraceFile.Open(trace);
        Assert.Equal(6, f.Samples);
        for (int i = 1; i < f.Samples; i++)
        {
            Assert.Equal(f.Set(i - 1).CanonicalPath, f.Set(i).Parent!.CanonicalPath);
            Assert.Equal((ulong)i * 10_000_000, f.TimeNs(i));
            Assert.True(r.Index.Samples[i].PagesWritten > 0);
        }
        // churn remaps, moves and protects slots between samples: the index records those changes.
        Assert.Contains(r.Index.Samples.Skip(1).SelectMany(s => s.Processes[0].VmaChanges!), c => c.Op == "unmap");
        Assert.Contains(r.Index.Samples.Skip(1).SelectMany(s => s.Processes[0].VmaChanges!), c => c.Op == "protect");
    }

    [Fact]
    public void Replay_EqualsTheRecordingAtEveryInstant()
    {
        var (trace, _) = RecordChurn();
        var (k, host, t) = Replay(trace);
        var f = TraceFile.Open(trace);
        for (int i = 0; i < f.Samples; i++)
        {
            if (i > 0)
                host.Advance(10_000_000);
            Assert.Equal((ulong)i + 1, t.Registers[Regs.Aux0]);
            var report = WorkloadApi.Verify(t);
            Assert.True(report.Ok, $"sample {i}: {report.Detail}");
            // VMAs of the replay cover the recorded ones.
            var maps = VmaDiff.ParseMaps(k.Proc.Maps(t.Pid));
            Assert.Empty(VmaDiff.Minus([.. f.Vmas(i, f.Pids[0]).Where(v => !v.Name.StartsWith("[v", StringComparison.Ordinal))], maps));
        }
    }

    [Fact]
    public void Replay_GivesANewlyMappedRangeThePagesTheRecordingHoldsThere()
    {
        // On a real host /proc/PID/maps is read just before the freeze: a range mapped in between
        // (brk growth) has pages in sample 0's pagemap but no VMA until sample 1, where its pages
        // are in-parent unless written again. Recorded here from an idle process whose 64 KiB are
        // written once, with the index edited as such a recording reads: the second half of the
        // mapping appears in sample 1's VMA changes.
        const string idle = """
            { "processes": [ { "name": "grows", "mappings": [ { "name": "heap", "size": "64KiB", "address": "0x10000000" } ],
              "behaviour": { "type": "idle", "prefill": true } } ] }
            """;
        var (trace, _) = RecordChurn(samples: 3, workload: idle);
        var f = TraceFile.Open(trace);
        int pid = f.Pids[0];
        var written = new HashSet<ulong>();
        f.Writes(0, pid, (va, _) => written.Add(va));
        const ulong Base = 0x10000000;
        Assert.All(Enumerable.Range(0, 16), i => Assert.Contains(Base + (ulong)i * 4096, written));
        var heap = f.Vmas(0, pid).Single(v => v.Start <= Base && Base < v.End);
        ulong cut = Base + 8 * 4096;
        Assert.Equal(0, CountStored(f, 1, pid, cut, heap.End));

        string indexFile = Path.Combine(trace, TraceIndex.FileName);
        var index = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(indexFile))!;
        string Hex(ulong a) => $"0x{a:x}";
        foreach (var v in index["samples"]![0]!["processes"]![0]!["vmas"]!.AsArray())
            if (v!["start"]!.GetValue<string>() == Hex(heap.Start))
                v["end"] = Hex(cut);
        index["samples"]![1]!["processes"]![0]!["vma_changes"]!.AsArray().Add(new System.Text.Json.Nodes.JsonObject
        {
            ["op"] = "map",
            ["start"] = Hex(cut),
            ["end"] = Hex(heap.End),
            ["prot"] = "rw-p",
        });
        File.WriteAllText(indexFile, index.ToJsonString());
        TraceLibrary.Forget(trace);

        var (_, host, t) = Replay(trace);
        for (int i = 1; i < 3; i++)
        {
            host.Advance(10_000_000);
            Assert.Equal((ulong)i + 1, t.Registers[Regs.Aux0]);
            var report = WorkloadApi.Verify(t);
            Assert.True(report.Ok, $"sample {i}: {report.Detail}");
        }
    }

    private static int CountStored(TraceFile f, int sample, int pid, ulong start, ulong end)
    {
        int n = 0;
        f.Writes(sample, pid, (va, _) => n += va >= start && va < end ? 1 : 0);
        return n;
    }

    [Fact]
    public void Verify_CatchesOneChangedByte()
    {
        var (trace, _) = RecordChurn(samples: 3);
        var (_, host, t) = Replay(trace);
        host.Advance(10_000_000);
        var f = TraceFile.Open(trace);
        ulong va = 0;
        f.Writes(1, f.Pids[0], (a, _) => va = va == 0 ? a : va);
        Assert.True(t.Write(va + 100, [0x5a, 0xa5]).Ok);
        var report = WorkloadApi.Verify(t);
        Assert.False(report.Ok);
        Assert.Equal(va, report.FirstBadAddress);
    }

    [Fact]
    public void Replay_SpeedAndLoop()
    {
        var (trace, _) = RecordChurn(samples: 4);
        var (_, host, t) = Replay(trace, """, "speed": 2.0, "loop": true""");
        host.Advance(15_000_000); // samples at 0, 5, 10, 15 ms at twice the speed
        Assert.Equal(4UL, t.Registers[Regs.Aux0]);
        host.Advance(5_000_000);  // the loop restarts one interval (5 ms scaled) after the last sample
        Assert.Equal(1UL, t.Registers[Regs.Aux1]);
        Assert.Equal(1UL, t.Registers[Regs.Aux0]);
        Assert.True(WorkloadApi.Verify(t).Ok, WorkloadApi.Verify(t).Detail);
        host.Advance(10_000_000);
        Assert.Equal(3UL, t.Registers[Regs.Aux0]);
        Assert.True(WorkloadApi.Verify(t).Ok, WorkloadApi.Verify(t).Detail);
    }

    [Fact]
    public void PreDumpChainOverAReplay_RestoresByteIdentical()
    {
        var (trace, _) = RecordChurn();
        var (k, host, t) = Replay(trace);
        string img = Path.Combine(_dir, "img");
        for (int i = 1; i <= 3; i++)
        {
            host.Advance(10_000_000);
            Criu.PreDump(new SimKernelAdapter(host), new DumpOptions { Pid = t.Pid, ImagesDir = Path.Combine(img, $"{i}"), PrevImagesDir = i == 1 ? null : $"../{i - 1}" });
        }
        host.Advance(10_000_000);
        Criu.Dump(new SimKernelAdapter(host), new DumpOptions { Pid = t.Pid, ImagesDir = Path.Combine(img, "4"), PrevImagesDir = "../3" });
        var dest = NewKernel();
        var r = Criu.Restore(new SimKernelAdapter(new LiveHost(dest)), new RestoreOptions { ImagesDir = Path.Combine(img, "4") });
        var restored = dest.FindTask(r.Pids[0])!;
        var report = WorkloadApi.Verify(restored);
        Assert.True(report.Ok, report.Detail);
        Assert.Equal(5UL, restored.Registers[Regs.Aux0]);
    }

    [Fact]
    public void SoftDirtyOnTheReplay_SeesTheRecordedWriteSet()
    {
        var (trace, r) = RecordChurn(samples: 4);
        var (k, host, t) = Replay(trace);
        var f = TraceFile.Open(trace);
        string img = Path.Combine(_dir, "sd");
        Criu.PreDump(new SimKernelAdapter(host), new DumpOptions { Pid = t.Pid, ImagesDir = Path.Combine(img, "0"), Tracker = TrackerKind.SoftDirty });
        for (int i = 1; i < f.Samples; i++)
        {
            host.Advance(10_000_000);
            var d = Criu.PreDump(new SimKernelAdapter(host), new DumpOptions { Pid = t.Pid, ImagesDir = Path.Combine(img, $"{i}"), PrevImagesDir = $"../{i - 1}", Tracker = TrackerKind.SoftDirty });
            // Every page the recording stored at that sample (its vDSO aside) is written by the
            // replay and reported by soft-dirty. Soft-dirty may report more: a VMA the replay maps
            // anew is VM_SOFTDIRTY as a whole, and merging spreads that flag to its neighbours.
            var vdso = f.Vmas(i, f.Pids[0]).Where(v => v.Name.StartsWith("[v", StringComparison.Ordinal)).ToList();
            var recorded = new List<ulong>();
            f.Writes(i, f.Pids[0], (va, _) => { if (!vdso.Any(v => va >= v.Start && va < v.End)) recorded.Add(va); });
            var dumped = ImageSet.Open(Path.Combine(img, $"{i}")).ReadPagemap(t.Pid);
            foreach (ulong va in recorded)
            {
                int e = dumped.FindEntry(va);
                Assert.True(e >= 0 && (PagemapImage.FlagsOf(dumped.Entries[e]) & PagemapFlags.Present) != 0, $"sample {i}: page 0x{va:x} written by the replay, not reported by soft-dirty");
            }
            Assert.InRange(d.Stats.PagesWritten, (ulong)recorded.Count, (ulong)recorded.Count * 2);
        }
    }

    [Fact]
    public void ProcessThatExits_EndsTheRecordingEarly_WithWhatWasCaptured()
    {
        // A script that writes, then reads an unmapped address: SIGSEGV after its fourth op (40 ms).
        const string dying = """
            { "processes": [ { "name": "dies", "mappings": [ { "name": "a", "size": "64KiB" } ],
              "behaviour": { "type": "script", "ops_per_second": 100, "ops": [
                { "op": "write", "region": "a", "page": 1, "bytes": "one" },
                { "op": "write", "region": "a", "page": 2, "bytes": "two" },
                { "op": "munmap", "region": "a" },
                { "op": "read", "region": "a", "page": 3 } ] } } ] }
            """;
        var (trace, r) = RecordChurn(samples: 20, workload: dying);
        Assert.True(r.Index.EndedEarly);
        Assert.Contains("exited", r.Index.EndReason);
        Assert.InRange(r.Samples, 2, 19);
        var f = TraceFile.Open(trace);
        Assert.Equal(r.Samples, f.Samples);
        Assert.Equal(r.Samples, Directory.GetDirectories(trace).Length);
    }

    [Fact]
    public void DamagedTrace_IsRefusedNamingTheFile()
    {
        var (trace, _) = RecordChurn(samples: 3);
        string index = Path.Combine(trace, TraceIndex.FileName);
        File.WriteAllText(index, File.ReadAllText(index)[..200]);
        var e = Assert.Throws<ImageFormatException>(() => TraceFile.Open(trace));
        Assert.Contains(index, e.Message);
        Assert.DoesNotContain('\n', e.Message);

        var (trace2, _) = RecordChurn(samples: 3);
        string pagemap = Directory.GetFiles(Path.Combine(trace2, "1"), "pagemap-*.img")[0];
        File.WriteAllBytes(pagemap, File.ReadAllBytes(pagemap)[..10]);
        var e2 = Assert.ThrowsAny<Exception>(() => TraceFile.Open(trace2));
        Assert.IsType<ImageFormatException>(e2);
        Assert.Contains(Path.Combine(trace2, "1"), e2.Message);

        var (trace3, _) = RecordChurn(samples: 3);
        File.Delete(Path.Combine(trace3, TraceIndex.FileName));
        Assert.Contains("missing", Assert.Throws<ImageFormatException>(() => TraceFile.Open(trace3)).Message);
    }
}

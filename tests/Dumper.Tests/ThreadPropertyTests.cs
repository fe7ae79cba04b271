using System.Globalization;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Workloads;
using FsCheck;
using FsCheck.Fluent;
using Microsoft.FSharp.Core;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// Property: several threads of one process stamp pages concurrently in virtual time (they keep
/// running while each pre-dump writes its pages, after the tracker was reset), pre-dumps happen
/// at random points with a random tracker, then a final dump and a restore: the restored memory
/// equals the memory at the final freeze byte for byte, every thread comes back with its
/// registers, and the workload's own check finds every thread's last write (no write is lost).
/// </summary>
public class ThreadPropertyTests
{
    public sealed record Schedule(int Threads, ulong Rate, TrackerKind Tracker, bool Lz4, (int AdvanceUs, bool PreDump)[] Steps);

    private static readonly TrackerKind[] Trackers = [TrackerKind.Auto, TrackerKind.SoftDirty, TrackerKind.PagemapScan, TrackerKind.UffdWp];

    private static readonly Gen<Schedule> ScheduleGen =
        from threads in Gen.Choose(1, 4)
        from rate in Gen.Elements(5_000UL, 40_000UL, 200_000UL)
        from tracker in Gen.Elements(Trackers)
        from lz4 in Gen.Elements(true, false)
        from steps in Gen.ArrayOf(
            from us in Gen.Choose(0, 3000)
            from pre in Gen.Frequency((2, Gen.Constant(true)), (1, Gen.Constant(false)))
            select (us, pre)).Select(a => a.Length > 6 ? a[..6] : a)
        select new Schedule(threads, rate, tracker, lz4, steps);

    private static Config Deterministic(ulong seed, int tests) =>
        Config.QuickThrowOnFailure.WithMaxTest(tests)
              .WithReplay(FSharpOption<Replay>.Some(new Replay(new Rnd(seed, 0x9E3779B97F4A7C15UL | 1), FSharpOption<int>.None)));

    [Fact]
    public void RandomThreadedWrites_RandomPreDumpSchedules_NeverLoseAWrite() =>
        Prop.ForAll(Arb.From(ScheduleGen), Run).Check(Deterministic(0x7EAD5, 10));

    private static bool Run(Schedule s)
    {
        var k = RoundTrip.NewKernel();
        var host = new LiveHost(k);
        string json = $$"""
            { "seed": 5, "processes": [ { "name": "mt", "mappings": [ { "name": "data", "size": "1MiB", "prot": "rw" } ],
              "behaviour": { "type": "threads", "threads": {{s.Threads}}, "prefill": true, "pages_per_second": {{s.Rate.ToString(CultureInfo.InvariantCulture)}} } } ] }
            """;
        var leader = WorkloadApi.Spawn(k, WorkloadSpec.Parse(k, "mt.json", System.Text.Encoding.UTF8.GetBytes(json)))[0];
        int root = leader.Pid;
        host.Advance(1_000_000);
        string baseDir = RoundTrip.NewDir("mt-prop");
        try
        {
            var store = s.Lz4 ? PageStoreOptions.Lz4() : PageStoreOptions.Raw;
            string? prev = null;
            int n = 0;
            foreach (var (us, pre) in s.Steps)
            {
                host.Advance((ulong)us * 1000);
                if (!pre)
                    continue;
                string d = Path.Combine(baseDir, $"pre{n}");
                // The threads run on while the pre-dump writes (LetTimePass after the thaw).
                Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = root, ImagesDir = d, PrevImagesDir = prev, PageStore = store, Tracker = s.Tracker });
                prev = $"../pre{n++}";
            }
            host.Advance(500_000);
            var expected = RoundTrip.Snapshot(k, root);
            Assert.Equal(s.Threads, expected[0].Threads.Count);
            string final = Path.Combine(baseDir, "dump");
            Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = root, ImagesDir = final, PrevImagesDir = prev, PageStore = store, Tracker = s.Tracker, TrackMem = true });
            var dest = new Kernel(k.Config);
            Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = final });
            RoundTrip.AssertSame(expected, dest);
            var report = WorkloadApi.Verify(dest.GetTask(root));
            Assert.True(report.Ok, $"{s}: {report.Detail}");
            // Each restored thread continues its own work where it stopped.
            new LiveHost(dest).Advance(2_000_000);
            Assert.True(WorkloadApi.Verify(dest.GetTask(root)).Ok);
            return true;
        }
        finally
        {
            Directory.Delete(baseDir, recursive: true);
        }
    }
}

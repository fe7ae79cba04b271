using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Workloads;
using CriuSharp.Traces;

namespace CriuSharp.HostKernel.Tests;

/// <summary>
/// A recording of a real process (the checked-in samples/traces/hotset-32m: hotset.c recorded on a
/// 6.18 host; a live recording would make the test depend on when its samples fall), replayed in
/// the simulator and pre-dumped there twice at the same instants: by the content tracker (pages whose digest differs from the parent's) and by
/// soft-dirty (pages written since the last clear_refs, no elision). The content tracker must store
/// exactly what soft-dirty stores minus the pages written with the bytes they already had.
/// </summary>
public sealed class ReplayTrackerTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("criu-sharp-replaytrack-").FullName;

    public ReplayTrackerTests() => TraceFile.Register();

    public void Dispose() => Directory.Delete(_root, true);

    private string Dir(string name) => Path.Combine(_root, name);

    [Fact]
    public void ContentTracker_StoresWhatSoftDirtyStores_MinusWrittenButUnchangedPages() =>
        CheckAgreement(Path.Combine(RepoRoot(), "samples", "traces", "hotset-32m"));

    private static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "criu-sharp.sln")))
            d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repository root not found");
    }

    private void CheckAgreement(string trace)
    {
        var k = new Kernel(new KernelConfig { Arch = SimKernel.Arch.ArchProfile.Parse("x86_64"), Version = KernelVersion.Parse("modern"), MemoryBytes = 1L << 30, SwapBytes = 64L << 20 });
        var live = new LiveHost(k);
        string workload = Dir("replay.json");
        // loop: the second pass maps every VMA anew and writes every recorded page again, most of
        // them with the bytes they held at the end of the first pass.
        File.WriteAllText(workload, $$"""{ "processes": [ { "name": "replay", "behaviour": { "type": "trace", "path": "{{trace}}", "loop": true } } ] }""");
        var t = WorkloadApi.Spawn(k, workload)[0];
        var f = TraceFile.Open(trace);
        ulong step = (f.TimeNs(f.Samples - 1) + f.IntervalNs) / 3 + 1;

        var api = new SimKernelAdapter(live);
        long unchanged = 0;
        for (int i = 0; i <= 7; i++)
        {
            if (i > 0)
                live.Advance(step);
            ulong at = t.Registers[Regs.Aux0] + (t.Registers[Regs.Aux1] << 32);
            string? prev = i == 0 ? null : $"../{i - 1}";
            Criu.PreDump(api, new DumpOptions { Pid = t.Pid, ImagesDir = Dir($"content/{i}"), PrevImagesDir = prev, Tracker = TrackerKind.Content });
            Criu.PreDump(api, new DumpOptions { Pid = t.Pid, ImagesDir = Dir($"sd/{i}"), PrevImagesDir = prev, Tracker = TrackerKind.SoftDirty });
            Assert.Equal(at, t.Registers[Regs.Aux0] + (t.Registers[Regs.Aux1] << 32));
            if (i == 0)
                continue;

            // CRIU dumps the vDSO's pages whole at every dump, whatever the tracker says
            // (criu/mem.c, should_dump_page): both chains hold them; the rule is about the rest.
            var vdso = VmaDiff.ParseMaps(k.Proc.Maps(t.Pid)).Where(v => v.Name.StartsWith("[v", StringComparison.Ordinal)).ToList();
            bool Tracked(ulong va) => !vdso.Any(v => v.Start <= va && va < v.End);
            var softDirty = Stored(Dir($"sd/{i}"), t.Pid);
            var content = Stored(Dir($"content/{i}"), t.Pid);
            Assert.Equal(softDirty.Where(va => !Tracked(va)), content.Where(va => !Tracked(va)));
            softDirty.RemoveWhere(va => !Tracked(va));
            content.RemoveWhere(va => !Tracked(va));
            using var before = ImageSet.Open(Dir($"content/{i - 1}")).OpenPageReader(t.Pid);
            using var now = ImageSet.Open(Dir($"sd/{i}")).OpenPageReader(t.Pid);
            var a = new byte[4096];
            var b = new byte[4096];
            var expected = new SortedSet<ulong>();
            foreach (ulong va in softDirty)
            {
                now.Read(va, b);
                bool same = before.Locate(va) is not (PageLocation.Absent or PageLocation.Lazy)
                            && ReadInto(before, va, a).AsSpan().SequenceEqual(b);
                if (same)
                    unchanged++;
                else
                    expected.Add(va);
            }
            var missing = expected.Except(content).Take(3).Select(v => $"0x{v:x}");
            var extra = content.Except(expected).Take(3).Select(v => $"0x{v:x}");
            Assert.True(expected.SetEquals(content),
                $"dump {i}: content tracker {content.Count} pages, soft-dirty {softDirty.Count} minus unchanged = {expected.Count}; missing {string.Join(", ", missing)}; extra {string.Join(", ", extra)}");
        }
        // The looping pass rewrites pages with their own bytes: the rule's "minus" was exercised.
        Assert.True(unchanged > 0);
    }

    private static byte[] ReadInto(PageReader r, ulong va, byte[] buffer)
    {
        r.Read(va, buffer);
        return buffer;
    }

    /// <summary>Addresses of the pages stored (PE_PRESENT) by the image set itself.</summary>
    private static SortedSet<ulong> Stored(string dir, int pid)
    {
        var s = new SortedSet<ulong>();
        foreach (var e in ImageSet.Open(dir).ReadPagemap(pid).Entries)
            if ((PagemapImage.FlagsOf(e) & PagemapFlags.Present) != 0)
                for (ulong i = 0; i < PagemapImage.NrPages(e); i++)
                    s.Add(e.Vaddr + (i << 12));
        return s;
    }
}

using CriuSharp.Dumper;
using CriuSharp.Dumper.Proc;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>Memory and registers of one task, read through /proc as a test oracle.</summary>
public sealed record TaskSnapshot(int Pid, string Comm, ulong[] Registers, byte[] Extra, List<(ulong Start, ulong End, string Perms, byte[] Bytes)> Vmas)
{
    /// <summary>The threads other than the leader: tid and registers.</summary>
    public List<(int Tid, ulong[] Registers)> Threads { get; init; } = [];
}

/// <summary>
/// The zdtm-style cycle for any tree on any host: snapshot, N pre-dumps (each pointing at the last,
/// letting the host run between them), a final dump, restore into a fresh host, compare. The
/// workload matrix (ZdtmMatrixTests) reuses this with its own hosts and roots.
/// </summary>
public static class RoundTrip
{
    public static string NewDir(string tag)
    {
        var d = Path.Combine(Path.GetTempPath(), "criu-sharp-dumper-tests", $"{tag}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(d);
        return d;
    }

    public static Kernel NewKernel(string arch = "x86_64", string version = "modern", long hugePages = 0) =>
        new(new KernelConfig { Arch = SimKernel.Arch.ArchProfile.Parse(arch), Version = KernelVersion.Parse(version), MemoryBytes = 1L << 30, SwapBytes = 256L << 20, HugePages = hugePages });

    /// <summary>Every task of the tree: all mapped bytes except [vvar] and [vsyscall] (reads fault pages in; take it before swapping out).</summary>
    public static List<TaskSnapshot> Snapshot(Kernel k, int root)
    {
        var list = new List<TaskSnapshot>();
        foreach (var t in k.Tree(root))
        {
            var vmas = new List<(ulong, ulong, string, byte[])>();
            foreach (var v in SmapsParser.Parse(k.Proc.Maps(t.Pid)))
            {
                if (v.Name is "[vvar]" or "[vsyscall]") continue;
                var bytes = new byte[v.Length];
                var r = k.Proc.ReadMemory(t.Pid, v.Start, bytes);
                Assert.True(r.Ok, $"read {t.Pid} 0x{v.Start:x}: {r}");
                vmas.Add((v.Start, v.End, $"{v.Prot}{(v.Shared ? 's' : 'p')}", bytes));
            }
            var threads = k.Threads(t.Pid).Where(th => th.IsThread).Select(th => (th.Pid, (ulong[])th.Registers.Clone())).ToList();
            list.Add(new TaskSnapshot(t.Pid, t.Comm, (ulong[])t.Registers.Clone(), t.ExtraState.ToArray(), vmas) { Threads = threads });
        }
        return list;
    }

    public static void AssertSame(List<TaskSnapshot> expected, Kernel dest)
    {
        foreach (var e in expected)
        {
            var t = dest.FindTask(e.Pid);
            Assert.NotNull(t);
            Assert.Equal(e.Comm, t!.Comm);
            Assert.Equal(e.Registers, t.Registers);
            Assert.Equal(e.Extra, t.ExtraState);
            Assert.Equal([e.Pid, .. e.Threads.Select(x => x.Tid)], dest.Proc.Threads(e.Pid));
            foreach (var (tid, regs) in e.Threads)
            {
                var th = dest.FindTask(tid)!;
                Assert.Equal(e.Pid, th.Tgid);
                Assert.Equal(regs, th.Registers);
            }
            foreach (var (s, end, perms, bytes) in e.Vmas)
            {
                var got = new byte[end - s];
                var r = dest.Proc.ReadMemory(e.Pid, s, got);
                Assert.True(r.Ok, $"restored {e.Pid} 0x{s:x}-0x{end:x} unreadable: {r}");
                if (!bytes.AsSpan().SequenceEqual(got))
                {
                    int i = bytes.AsSpan().CommonPrefixLength(got);
                    Assert.Fail($"pid {e.Pid} VMA 0x{s:x}-0x{end:x} differs at 0x{s + (ulong)i:x}");
                }
            }
            var maps = SmapsParser.Parse(dest.Proc.Maps(e.Pid)).Where(v => v.Name is not "[vvar]" and not "[vsyscall]").ToList();
            ulong covered = maps.Aggregate(0UL, (a, v) => a + v.Length);
            Assert.Equal(e.Vmas.Aggregate(0UL, (a, v) => a + (v.End - v.Start)), covered);
        }
    }

    /// <summary>
    /// Pre-dumps <paramref name="preDumps"/> times (calling <paramref name="between"/> after each),
    /// dumps, restores into a fresh kernel of the same profile, and checks byte equality.
    /// Returns the stats of every step.
    /// </summary>
    public static (List<DumpResult> Steps, RestoreResult Restore, Kernel Dest) DumpRestore(
        ISimHost host, int root, int preDumps, PageStoreOptions store, Action<int>? between = null,
        TrackerKind tracker = TrackerKind.Auto, bool autoDedup = false, string? baseDir = null)
    {
        var k = host.Kernel;
        baseDir ??= NewDir("rt");
        var steps = new List<DumpResult>();
        string? prev = null;
        for (int i = 0; i < preDumps; i++)
        {
            string d = Path.Combine(baseDir, $"pre{i}");
            steps.Add(Criu.PreDump(host.AsKernelApi(), new DumpOptions { Pid = root, ImagesDir = d, PrevImagesDir = prev, PageStore = store, Tracker = tracker, AutoDedup = autoDedup }));
            prev = $"../pre{i}";
            between?.Invoke(i);
        }
        var expected = Snapshot(k, root);
        string final = Path.Combine(baseDir, "dump");
        steps.Add(Criu.Dump(host.AsKernelApi(), new DumpOptions { Pid = root, ImagesDir = final, PrevImagesDir = prev, PageStore = store, Tracker = tracker, TrackMem = true, AutoDedup = autoDedup }));
        var dest = new Kernel(k.Config);
        foreach (var f in k.Fs.Files.Where(f => !f.IsShmem && !f.Path.StartsWith("/usr/bin/", StringComparison.Ordinal)))
        {
            var data = new byte[f.Size];
            k.Fs.Read(f, 0, data);
            dest.Fs.Create(f.Path, data);
        }
        var restore = Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = final });
        AssertSame(expected, dest);
        return (steps, restore, dest);
    }
}

using CriuSharp.SimKernel.Ipc;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using FsCheck;
using FsCheck.Fluent;
using Microsoft.FSharp.Core;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>Machine directories: save/load round trips, atomicity against kills, the lock.</summary>
public sealed class MachineTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "criu-sharp-machine-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_dir))
            Directory.Delete(_dir, recursive: true);
    }

    private static (ulong Addr, byte[] Expected) Populate(Kernel k, SimTask t, int pages, int seed)
    {
        ulong ps = (ulong)k.Arch.PageSize;
        ulong m = (ulong)t.Mmap(0, (ulong)pages * ps, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous).OrThrow("mmap");
        var data = new byte[pages * (int)ps];
        new Random(seed).NextBytes(data);
        t.Write(m, data).OrThrow("write");
        return (m, data);
    }

    private static string Snapshot(Kernel k, SimTask t, ulong m, int pages) =>
        k.Proc.Maps(t.Pid) + string.Join(",", k.Proc.ReadPagemap(t.Pid, m, pages).Select(e => e.ToString("x")));

    private const ulong Huge = 2UL << 20;

    /// <summary>
    /// A machine holding what the saved format once refused: a process with two threads (own
    /// registers and fault counts), a hugetlb pool with overcommit, private and shared MAP_HUGETLB
    /// mappings partly faulted (reservations still outstanding), a memfd MFD_HUGETLB file, SysV
    /// segments (one SHM_HUGETLB, one removed while attached), a forked child sharing private
    /// huge pages copy-on-write, and a regular file unlinked while mapped with dirty pages.
    /// </summary>
    private static (int Pid, int Tid, int Child, ulong Priv, ulong Shared, ulong Shm) BuildThreadsAndHugetlb(Kernel k)
    {
        k.Hugetlb.Write("/proc/sys/vm/nr_hugepages", "6").OrThrow("pool");
        k.Hugetlb.Write("/proc/sys/vm/nr_overcommit_hugepages", "2").OrThrow("overcommit");
        var t = k.Spawn("app");
        var th = k.CloneThread(t);
        th.Registers[3] = 0xfeed;
        t.Registers[3] = 0xbeef;
        var rw = Prot.Read | Prot.Write;
        ulong priv = (ulong)t.Mmap(0, 3 * Huge, rw, MapFlags.Private | MapFlags.Anonymous | MapFlags.HugeTlb).OrThrow("private");
        th.Write(priv, [1, 2, 3]).OrThrow("thread write"); // one of three reserved pages taken, by the thread
        ulong shared = (ulong)t.Mmap(0, 2 * Huge, rw, MapFlags.Shared | MapFlags.Anonymous | MapFlags.HugeTlb).OrThrow("shared");
        t.Write(shared + Huge + 5, [7]).OrThrow("shared write");
        k.MemfdCreate("mfd", Kernel.MfdHugetlb, out var mfd).OrThrow("memfd");
        ulong mf = (ulong)t.Mmap(0, Huge, rw, MapFlags.Shared, mfd).OrThrow("memfd map");
        t.Write(mf + 9, [9]).OrThrow("memfd write");
        int hugeSeg = (int)k.Shm.Shmget(0x51, Huge, ShmFlags.ShmHugetlb | ShmFlags.IpcCreat).OrThrow("shmget huge");
        ulong shm = (ulong)t.Shmat(hugeSeg).OrThrow("shmat");
        int seg = (int)k.Shm.Shmget(0x52, 3 * 4096, ShmFlags.IpcCreat).OrThrow("shmget");
        ulong small = (ulong)t.Shmat(seg).OrThrow("shmat small");
        th.Write(small + 4096, [4]).OrThrow("shm write");
        k.Shm.Shmctl(seg, ShmFlags.IpcRmid).OrThrow("rmid"); // removed, still attached
        var file = k.Fs.Create("/data/log", new byte[4 * 4096]);
        ulong fm = (ulong)t.Mmap(0, 4 * 4096, rw, MapFlags.Shared, file).OrThrow("file map");
        t.Write(fm + 2 * 4096, [5]).OrThrow("file write");
        k.Fs.Unlink("/data/log").OrThrow("unlink");
        var child = k.Fork(t);
        child.Write(priv + 1, [8]).OrThrow("child cow"); // copies the huge page from the pool
        return (t.Pid, th.Pid, child.Pid, priv, shared, shm);
    }

    private static byte[] StateBytes(Kernel k)
    {
        using var ms = new MemoryStream();
        using (var w = new BinaryWriter(ms, System.Text.Encoding.UTF8, leaveOpen: true))
            k.SaveState(w);
        return ms.ToArray();
    }

    /// <summary>What userspace sees: /proc of every task and thread, the pool files, memory contents.</summary>
    private static string View(Kernel k)
    {
        var sb = new System.Text.StringBuilder();
        foreach (var path in (string[])["/proc/meminfo", "/proc/sys/vm/nr_hugepages",
                     "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", "/sys/kernel/mm/hugepages/hugepages-2048kB/resv_hugepages",
                     "/sys/kernel/mm/hugepages/hugepages-2048kB/surplus_hugepages", "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_overcommit_hugepages"])
        {
            k.Hugetlb.Read(path, out var text).OrThrow(path);
            sb.Append(path).Append(": ").Append(text);
        }
        foreach (var seg in k.Shm.Segments.OrderBy(s => s.Id))
            sb.Append($"shm {seg.Id} {seg.Key:x} {seg.Size} {seg.Removed} {seg.File.Path}\n");
        foreach (var t in k.Tasks)
        {
            sb.Append($"task {t.Pid} tgid {t.Tgid} {t.State} regs {string.Join(',', t.Registers)} flt {k.Proc.ThreadFaults(t.Pid)} wp {t.WpFlt}\n");
            if (!t.Alive)
                continue;
            sb.Append(k.Proc.Maps(t.Pid)).Append(k.Proc.Smaps(t.Pid)).Append(k.Proc.Status(t.Pid)).Append(k.Proc.Stat(t.Pid));
            foreach (var (start, end) in t.MappedRanges)
            {
                int pages = (int)((end - start) / 4096);
                sb.Append(string.Join(",", k.Proc.ReadPagemap(t.Pid, start, pages).Select(e => e.ToString("x", System.Globalization.CultureInfo.InvariantCulture))));
                var bytes = new byte[end - start];
                if (k.Proc.ReadMemory(t.Pid, start, bytes).Ok)
                    sb.Append(' ').Append(Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(bytes)));
                sb.Append('\n');
            }
        }
        return sb.ToString();
    }

    /// <summary>What the processes do next; run on the original and on the loaded kernel, it must end the same.</summary>
    private static string Continue(Kernel k, (int Pid, int Tid, int Child, ulong Priv, ulong Shared, ulong Shm) m)
    {
        var log = new System.Text.StringBuilder();
        var t = k.GetTask(m.Pid);
        var th = k.GetTask(m.Tid);
        // The two outstanding reservations of the private mapping are honoured, the shared
        // mapping's second page is the same file page, the SHM_HUGETLB segment faults its reserved page.
        log.Append(th.Write(m.Priv + Huge, [1]).Ok).Append(t.Write(m.Priv + 2 * Huge, [2]).Ok);
        log.Append(th.Write(m.Shm, [3]).Ok).Append(t.Write(m.Shared, [4]).Ok);
        k.Shm.Shmctl(k.Shm.Segments.First(s => s.File.IsHugetlb).Id, ShmFlags.IpcRmid).OrThrow("rmid");
        log.Append(t.Shmdt(m.Shm).Ok);
        // Copy-on-write in the child needs a page the pool may no longer have: SIGBUS or not, the same on both.
        var child = k.GetTask(m.Child);
        log.Append(child.Write(m.Priv + Huge, [5]).Ok).Append(child.TermSignal);
        var late = k.CloneThread(t);
        log.Append(late.Pid);
        return log + View(k);
    }

    [Fact]
    public void SaveAndOpen_ThreadsHugetlbAndSysvSegments_LoadExactly_AndBehaveTheSameAfter()
    {
        (int, int, int, ulong, ulong, ulong) made;
        byte[] saved;
        string view, next, after;
        using (var machine = SimMachine.Create(_dir, new KernelConfig(), TimeSpan.FromSeconds(5)))
        {
            made = BuildThreadsAndHugetlb(machine.Kernel);
            machine.Save();
            saved = StateBytes(machine.Kernel);
            view = View(machine.Kernel);
            next = Continue(machine.Kernel, made); // the in-memory original goes on
        }
        using (var machine = SimMachine.Open(_dir, TimeSpan.FromSeconds(5)))
        {
            var k = machine.Kernel;
            Assert.Equal(saved, StateBytes(k));
            Assert.Equal(view, View(k));
            var leader = k.GetTask(made.Item1);
            var thread = k.GetTask(made.Item2);
            Assert.Same(leader.Mm, thread.Mm);
            Assert.Equal(0xfeedUL, thread.Registers[3]);
            Assert.Equal([made.Item1, made.Item2], k.Proc.Threads(made.Item1));
            Assert.Contains("/data/log (deleted)", k.Proc.Maps(made.Item1));
            Assert.Equal(next, Continue(k, made));
            after = View(k);
            machine.Save();
        }
        // A second save of the loaded machine (changed frames through the journal) loads the same again.
        using (var machine = SimMachine.Open(_dir, TimeSpan.FromSeconds(5)))
            Assert.Equal(after, View(machine.Kernel));
    }

    [Fact]
    public void SaveAndOpen_RestoresTasksMemoryPagemapAndClock()
    {
        ulong m;
        byte[] expected;
        string before;
        int pid;
        using (var machine = SimMachine.Create(_dir, new KernelConfig(), TimeSpan.FromSeconds(5)))
        {
            var t = machine.Kernel.Spawn("app");
            pid = t.Pid;
            (m, expected) = Populate(machine.Kernel, t, 64, 1);
            machine.Kernel.Proc.ClearRefs(pid, "4").OrThrow("clear");
            t.Write(m + 4096 * 3, [9]).OrThrow("write");
            expected[4096 * 3] = 9;
            t.Madvise(m + 4096 * 10, 4096 * 4, Madvise.PageOut).OrThrow("pageout");
            t.Registers[0] = 1234;
            t.ExtraState = [1, 2, 3];
            machine.Kernel.AdvanceClock(5_000_000);
            before = Snapshot(machine.Kernel, t, m, 64);
            machine.Save();
        }
        using (var machine = SimMachine.Open(_dir, TimeSpan.FromSeconds(5)))
        {
            var t = machine.Kernel.GetTask(pid);
            Assert.Equal(before, Snapshot(machine.Kernel, t, m, 64));
            var got = new byte[expected.Length];
            t.Read(m, got).OrThrow("read");
            Assert.Equal(expected, got);
            Assert.Equal(1234UL, t.Registers[0]);
            Assert.Equal([1, 2, 3], t.ExtraState);
            Assert.Equal(5_000_000UL, machine.Kernel.UptimeNs);
            // Tracking state survived: page 3 is soft-dirty, page 4 is not.
            var pm = machine.Kernel.Proc.ReadPagemap(pid, m + 3 * 4096, 2);
            Assert.NotEqual(0UL, pm[0] & PagemapBits.SoftDirty);
        }
    }

    [Fact]
    public void SecondSave_WritesOnlyChangedFrames_AndNewPidsContinue()
    {
        using (var machine = SimMachine.Create(_dir, new KernelConfig(), TimeSpan.FromSeconds(5)))
        {
            var t = machine.Kernel.Spawn("a");
            Populate(machine.Kernel, t, 256, 2);
            machine.Save();
        }
        using (var machine = SimMachine.Open(_dir, TimeSpan.FromSeconds(5)))
        {
            var t = machine.Kernel.Tasks.Single();
            ulong m = machine.Kernel.Proc.Maps(t.Pid).Split('\n').Where(l => l.Contains("rw-p 00000000 00:00 0 ")).Select(l => Convert.ToUInt64(l[..l.IndexOf('-')], 16)).First();
            t.Write(m, [42]).OrThrow("write");
            Assert.Single(machine.Kernel.Memory.DirtyFrames());
            var second = machine.Kernel.Spawn("b");
            Assert.True(second.Pid > t.Pid);
            machine.Save();
        }
        using (var machine = SimMachine.Open(_dir, TimeSpan.FromSeconds(5)))
            Assert.Equal(2, machine.Kernel.Tasks.Count());
    }

    [Fact]
    public void KilledSave_BeforeTheRename_LeavesThePreviousState()
    {
        int pid;
        using (var machine = SimMachine.Create(_dir, new KernelConfig(), TimeSpan.FromSeconds(5)))
            pid = machine.Kernel.Spawn("a").Pid;
        // A save that died after writing its journal and a temporary state, before the rename.
        File.WriteAllBytes(Path.Combine(_dir, "frames.journal.7"), [1, 2, 3]);
        File.WriteAllBytes(Path.Combine(_dir, "machine.state.tmp"), [4, 5, 6]);
        using (var machine = SimMachine.Open(_dir, TimeSpan.FromSeconds(5)))
        {
            Assert.Null(machine.Kernel.FindTask(pid)); // spawned but never saved
            Assert.Empty(Directory.EnumerateFiles(_dir, "frames.journal.*"));
            Assert.False(File.Exists(Path.Combine(_dir, "machine.state.tmp")));
        }
    }

    [Fact]
    public void DamagedState_IsRefusedWithAClearError()
    {
        using (var machine = SimMachine.Create(_dir, new KernelConfig(), TimeSpan.FromSeconds(5)))
        {
            machine.Kernel.Spawn("a");
            machine.Save();
        }
        string path = Path.Combine(_dir, SimMachine.StateFileName);
        var bytes = File.ReadAllBytes(path);
        bytes[bytes.Length / 2] ^= 0x40;
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<MachineStateException>(() => SimMachine.Open(_dir, TimeSpan.FromSeconds(1)));
        Assert.Contains("damaged", e.Message);
    }

    [Fact]
    public void SecondOpener_WaitsThenFailsBusy()
    {
        using var first = SimMachine.Create(_dir, new KernelConfig(), TimeSpan.FromSeconds(5));
        // The lock is per open file description; a second open in this process conflicts like another process would.
        Assert.Throws<MachineBusyException>(() => SimMachine.Open(_dir, TimeSpan.FromMilliseconds(200)));
    }

    [Fact]
    public void MissingMachine_SaysHowToCreateOne() =>
        Assert.Contains("spawn", Assert.Throws<MachineStateException>(() => SimMachine.Open(_dir, TimeSpan.Zero)).Message);

    private static string FullSnapshot(Kernel k, ulong arena)
    {
        var sb = new System.Text.StringBuilder();
        foreach (var t in k.Tasks)
        {
            sb.Append(k.Proc.Maps(t.Pid)).Append(k.Proc.Smaps(t.Pid)).Append(k.Proc.Status(t.Pid));
            foreach (ulong e in k.Proc.ReadPagemap(t.Pid, arena, PropertyTests.ArenaPages)) sb.Append(e.ToString("x")).Append(',');
            var page = new byte[k.Arch.PageSize];
            for (int i = 0; i < PropertyTests.ArenaPages; i++)
                if (t.Mm.PeekPage(arena + (ulong)i * (ulong)k.Arch.PageSize, page))
                    sb.Append(Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(page)));
        }
        return sb.ToString();
    }

    [Fact]
    public void RandomOperations_SurviveSaveAndOpenAtRandomPoints()
    {
        int run = 0;
        Check.One(Config.QuickThrowOnFailure.WithMaxTest(12)
                .WithReplay(FSharpOption<Replay>.Some(new Replay(new Rnd(99, 0x9E3779B97F4A7C15UL | 1), FSharpOption<int>.None))),
            Prop.ForAll(Gen.ListOf(PropertyTests.OpGen, 30).Select(l => l.ToList()).ToArbitrary(), ops =>
            {
                string dir = _dir + "-" + run++;
                try
                {
                    const ulong arena = 0x200000000000UL;
                    var snapshot = new Dictionary<(int, ulong), byte[]>();
                    var machine = SimMachine.Create(dir, new KernelConfig { MemoryBytes = 1L << 30, SwapBytes = 64L << 20 }, TimeSpan.FromSeconds(5));
                    var t = machine.Kernel.Spawn("p");
                    for (int i = 0; i < ops.Count; i++)
                    {
                        PropertyTests.Apply(machine.Kernel, t, arena, ops[i], snapshot);
                        if (i % 7 == 3)
                        {
                            string before = FullSnapshot(machine.Kernel, arena);
                            machine.Save();
                            machine.Dispose();
                            machine = SimMachine.Open(dir, TimeSpan.FromSeconds(5));
                            t = machine.Kernel.GetTask(t.Pid);
                            Assert.Equal(before, FullSnapshot(machine.Kernel, arena));
                        }
                    }
                    machine.Dispose();
                }
                finally
                {
                    if (Directory.Exists(dir)) Directory.Delete(dir, true);
                }
            }));
    }
}

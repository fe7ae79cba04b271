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

    [Fact]
    public void Save_RefusesThreadsAndHugetlb_RatherThanWriteAMachineThatLoadsDifferent()
    {
        using var machine = SimMachine.Create(_dir, new KernelConfig(), TimeSpan.FromSeconds(5));
        var t = machine.Kernel.Spawn("app");
        var th = machine.Kernel.CloneThread(t);
        Assert.Equal(Errno.EOPNOTSUPP, Assert.Throws<KernelException>(machine.Save).Errno);
        machine.Kernel.ExitThread(th);
        machine.Kernel.Hugetlb.Write("/proc/sys/vm/nr_hugepages", "1").OrThrow("pool");
        Assert.Equal(Errno.EOPNOTSUPP, Assert.Throws<KernelException>(machine.Save).Errno);
        machine.Kernel.Hugetlb.Write("/proc/sys/vm/nr_hugepages", "0").OrThrow("pool");
        machine.Save();
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

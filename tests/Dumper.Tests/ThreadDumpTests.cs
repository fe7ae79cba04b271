using System.Diagnostics;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.ImageFormat.Images;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// Multi-threaded processes as CRIU dumps them (criu/cr-dump.c dump_task_core_all and
/// dump_task_thread, criu/pstree.c): pstree lists every thread, each thread has its own core image
/// (the leader's with task_core, the others with thread_core and registers only), and restore
/// clones every thread back with its registers.
/// </summary>
public class ThreadDumpTests
{
    /// <summary>A process with two more threads and a forked child with one, each thread with its own registers.</summary>
    private static Kernel ThreadedTree()
    {
        var k = RoundTrip.NewKernel();
        var root = Procs.Rich(k, 1500);
        for (int i = 0; i < 2; i++)
        {
            var th = k.CloneThread(root, 1510 + i);
            th.Registers[0] = 0x4000UL + (ulong)i; // each thread at its own instruction pointer
            th.Registers[3] = 0xb000UL + (ulong)i;
            Procs.Touch(th, Proc.SmapsParser.Parse(k.Proc.Maps(1500)).First(v => v.IsAnonPrivate && v.Name is null).Start + 64 * (ulong)i, 0x7700UL + (ulong)i);
        }
        var child = k.Fork(root, 1501);
        var cth = k.CloneThread(child, 1520);
        cth.Registers[5] = 0xc0ffee;
        return k;
    }

    [Fact]
    public void Dump_WritesACorePerThread_AndPstreeListsThem_RestoreClonesThemBack()
    {
        var k = ThreadedTree();
        string baseDir = RoundTrip.NewDir("threads");
        var (steps, _, dest) = RoundTrip.DumpRestore(new ClockOnlyHost(k), 1500, 1, PageStoreOptions.Lz4(), baseDir: baseDir);
        Assert.Equal([1500, 1501], steps[^1].Pids);
        var set = ImageSet.Open(Path.Combine(baseDir, "dump"));
        var pstree = set.ReadPstree();
        Assert.Equal([1500u, 1510u, 1511u], pstree.Single(p => p.Pid == 1500).Threads);
        Assert.Equal([1501u, 1520u], pstree.Single(p => p.Pid == 1501).Threads);

        var leader = set.ReadCore(1500);
        Assert.NotNull(leader.Tc);
        Assert.Equal("rich", leader.ThreadCore.Comm);
        var thread = set.ReadCore(1511);
        Assert.Null(thread.Tc); // task_core belongs to the leader only
        Assert.Equal(0x4001UL, thread.ThreadInfo.Gpregs.Ip);
        Assert.Equal(0xb001UL, thread.ThreadInfo.Gpregs.Bx);
        Assert.True(thread.ThreadCore.HasBlkSigset);
        Assert.Equal(2u, thread.ThreadCore.Sas.SsFlags); // SS_DISABLE
        Assert.Equal(0xc0ffeeUL, set.ReadCore(1520).ThreadInfo.Gpregs.Dx);

        // RoundTrip compared registers of every thread; the restored threads share their leader's memory.
        var rt = dest.FindTask(1510)!;
        Assert.True(rt.IsThread);
        Procs.Touch(rt, Proc.SmapsParser.Parse(dest.Proc.Maps(1500)).First(v => v.IsAnonPrivate && v.Name is null).Start, 0x1234);
        Assert.True(dest.FindTask(1500)!.LoadU64(Proc.SmapsParser.Parse(dest.Proc.Maps(1500)).First(v => v.IsAnonPrivate && v.Name is null).Start, out ulong seen));
        Assert.Equal(0x1234UL, seen);
    }

    [Fact]
    public void Restore_RefusesWhenAThreadIdIsTaken()
    {
        var k = ThreadedTree();
        var dir = RoundTrip.NewDir("tid-taken");
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 1500, ImagesDir = dir });
        var dest = new Kernel(k.Config);
        dest.Fs.Create("/data/blob", DumpRestoreTests.ReadFile(k, "/data/blob"));
        dest.Spawn("squatter", 1511);
        var e = Assert.Throws<DumperException>(() => Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = dir }));
        Assert.Contains("thread id 1511", e.Message);
    }

    [Fact]
    public void Dump_FreezesEveryThread_AndChargesTheFreezerPerThread()
    {
        var k = ThreadedTree();
        var api = new ClockOnlyHost(k).AsKernelApi();
        var dir = RoundTrip.NewDir("freeze-threads");
        var r = Criu.Dump(api, new DumpOptions { Pid = 1500, ImagesDir = dir, LeaveRunning = true });
        // Five tasks (two processes, three more threads), 150 µs each by default.
        Assert.Equal(5 * new CostModel().FreezeNsPerTask / 1000, r.Stats.FreezingTime);
        Assert.All(k.Tasks, t => Assert.Equal(TaskState.Running, t.State)); // all thawed again
    }

    [Fact]
    public void Crit_DecodesThreadCores_AndPstreeThreads()
    {
        Assert.True(File.Exists("/usr/bin/crit"), "crit (Debian's criu package) is needed: ./run-tests.sh installs it");
        var k = ThreadedTree();
        var dir = RoundTrip.NewDir("crit-threads");
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 1500, ImagesDir = dir, PageStore = PageStoreOptions.Raw });
        var (code, pstree) = Crit("show", Path.Combine(dir, "pstree.img"));
        Assert.True(code == 0, pstree);
        Assert.Contains("1511", pstree);
        Assert.Contains("1520", pstree);
        var (tcode, core) = Crit("show", Path.Combine(dir, "core-1511.img"));
        Assert.True(tcode == 0, core);
        Assert.Contains("\"gpregs\"", core);
        Assert.Contains("\"thread_core\"", core);
        Assert.DoesNotContain("\"tc\"", core);
        var (pcode, ps) = Crit("x", dir, "ps");
        Assert.True(pcode == 0, ps);
        Assert.Contains("rich", ps);
        Assert.Contains("1501", ps);
    }

    private static (int Code, string Out) Crit(params string[] args)
    {
        var psi = new ProcessStartInfo("/usr/bin/crit", args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string o = p.StandardOutput.ReadToEnd() + err.Result;
        p.WaitForExit();
        return (p.ExitCode, o);
    }
}

using CriuSharp.SimKernel.Mm;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// Threads as clone(2) with CLONE_VM | CLONE_THREAD makes them (man 2 clone; kernel/exit.c for
/// exit_group; fs/proc/array.c for Tgid/Threads in status and per-thread minflt/majflt).
/// </summary>
public class ThreadTests
{
    [Fact]
    public void Thread_SharesTheAddressSpace_HasItsOwnRegistersAndFaultCounts()
    {
        var s = new Sim();
        ulong m = s.Anon(4);
        s.T.Registers[0] = 0x1111;
        var th = s.K.CloneThread(s.T);
        Assert.Same(s.T.Mm, th.Mm);
        Assert.Equal(s.T.Pid, th.Tgid);
        Assert.True(th.IsThread);
        Assert.Equal(0x1111UL, th.Registers[0]); // starts from the caller's state
        th.Registers[0] = 0x2222;
        Assert.Equal(0x1111UL, s.T.Registers[0]);

        long leaderBefore = s.T.MinFlt;
        th.Write(m, [7]).OrThrow("thread write");
        th.Write(m + s.PS, [8]).OrThrow("thread write");
        Assert.Equal(2, th.MinFlt);
        Assert.Equal(leaderBefore, s.T.MinFlt);
        Assert.Equal(7, s.R(m)); // the leader sees the thread's store
        Assert.Equal(0, s.T.MinFlt - leaderBefore); // a read of a present page takes no fault
    }

    [Fact]
    public void ProcShowsTheThreadGroup_TreeListsOnlyProcesses()
    {
        var s = new Sim();
        var a = s.K.CloneThread(s.T);
        var b = s.K.CloneThread(a); // a thread's clone joins the same group
        Assert.Equal(s.T.Pid, b.Tgid);
        Assert.Equal([s.T.Pid, a.Pid, b.Pid], s.K.Proc.Threads(b.Pid));
        Assert.Contains("Threads:\t3\n", s.K.Proc.Status(s.T.Pid));
        Assert.Contains($"Tgid:\t{s.T.Pid}\n", s.K.Proc.Status(a.Pid));
        Assert.Equal([s.T.Pid], s.K.Tree(s.T.Pid).Select(t => t.Pid));
        var child = s.K.Fork(a);
        Assert.Equal(s.T.Pid, child.Ppid); // getppid() of a child forked by a thread is the group
        Assert.Equal([s.T.Pid, child.Pid], s.K.Tree(s.T.Pid).Select(t => t.Pid));
    }

    [Fact]
    public void FreezeAndThaw_CoverEveryThread()
    {
        var s = new Sim();
        var th = s.K.CloneThread(s.T);
        s.K.Freeze(s.T.Pid);
        Assert.Equal(TaskState.Frozen, th.State);
        Assert.Throws<InvalidOperationException>(() => th.Write(0x1000, [1]));
        s.K.Thaw(s.T.Pid);
        Assert.Equal(TaskState.Running, th.State);
    }

    [Fact]
    public void FatalSignalInAThread_KillsTheGroup_ExitThreadLeavesTheRest()
    {
        var s = new Sim();
        ulong m = s.Anon(1);
        var a = s.K.CloneThread(s.T);
        var b = s.K.CloneThread(s.T);
        s.K.ExitThread(a);
        Assert.Equal([s.T.Pid, b.Pid], s.K.Proc.Threads(s.T.Pid));
        s.T.Write(m, [1]).OrThrow("leader still runs");
        Assert.False(b.Write(0x10, [1]).Ok); // SIGSEGV in thread b
        Assert.Equal(TaskState.Zombie, s.T.State);
        Assert.Equal(SimTask.SIGSEGV, s.T.TermSignal);
        Assert.Equal(TaskState.Dead, b.State);
        Assert.True(s.T.Mm.Dead);
    }
}

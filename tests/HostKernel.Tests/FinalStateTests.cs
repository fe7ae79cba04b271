using CriuSharp.KernelApi;

namespace CriuSharp.HostKernel.Tests;

/// <summary>The freezer's wait bound (CRIU's --timeout) and a freeze that ends in a group stop (--leave-stopped).</summary>
public class FinalStateTests
{
    [Fact]
    public void FreezerWait_GivesUpWithEtimedout_OnceTheTimeoutHasPassed()
    {
        var e = Assert.Throws<HostKernelException>(() => Freezer.WaitFor(() => false, TimeSpan.FromMilliseconds(20)));
        Assert.Equal(110, e.Errno);
        Assert.Contains("timeout reached", e.Message);
        Assert.Equal(Errno.ETIMEDOUT, LinuxHost.ToKernel(e).Errno);
        int polls = 0;
        Freezer.WaitFor(() => ++polls == 3, TimeSpan.FromMinutes(5));
        Assert.Equal(3, polls);
    }

    private static char State(int pid)
    {
        var s = File.ReadAllText($"/proc/{pid}/stat");
        return s[s.LastIndexOf(')') + 2];
    }

    [Fact]
    public void ThawStopped_LeavesTheTaskInAGroupStop_Untraced_AndSigcontResumesIt()
    {
        using var c = RealChild.Start(Programs.MemTouch, "4");
        Programs.ParseReady(c.ReadLine());
        using (var host = new LinuxHost())
            host.Freeze(c.Pid).ThawStopped();
        // The queued SIGSTOP is taken as soon as the task runs again (bounded poll on the state).
        for (int i = 0; i < 1000 && State(c.Pid) != 'T'; i++)
            Thread.Sleep(10);
        Assert.Equal('T', State(c.Pid));
        Assert.Contains("TracerPid:\t0", File.ReadAllText($"/proc/{c.Pid}/status"));
        Assert.Equal(0, Interop.Libc.Kill(c.Pid, Interop.Libc.SIGCONT));
        for (int i = 0; i < 1000 && State(c.Pid) == 'T'; i++)
            Thread.Sleep(10);
        Assert.NotEqual('T', State(c.Pid));
    }
}

using CriuSharp.KernelApi;

namespace CriuSharp.HostKernel.Tests;

/// <summary>The host kernel behind <see cref="IKernel"/>, on real processes this test starts.</summary>
public class LinuxHostTests
{
    [Fact]
    public void ReadMemory_EqualsProcPidMem()
    {
        using var c = RealChild.Start(Programs.MemTouch, "32");
        ulong a = Programs.ParseReady(c.ReadLine());
        using var host = new LinuxHost();
        var buf = new byte[32 * 4096];
        Assert.True(host.ReadMemory(c.Pid, a, buf).Ok);
        Assert.Equal(c.ReadMem(a, buf.Length), buf);
    }

    [Fact]
    public void Freeze_StopsTheTree_ReadsRegisters_AndThawLeavesItRunningWhereItWas()
    {
        using var c = RealChild.Start(Programs.MemTouch, "8");
        Programs.ParseReady(c.ReadLine());
        string cgroupBefore = File.ReadAllText($"/proc/{c.Pid}/cgroup");
        using var host = new LinuxHost();
        using (var lease = host.Freeze(c.Pid))
        {
            Assert.Contains(RealChild.State(c.Pid), "tT");
            c.Send("sum"); // must not be answered while frozen
            Thread.Sleep(100);
            Assert.Single(c.Output.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            if (Environment.UserName == "root")
                Assert.Null(host.RegistersUnavailable); // root may ptrace any process
            if (host.RegistersUnavailable is null && host.LastFreezeMethod == FreezeMethod.CgroupFreezer)
            {
                // Held by ptrace, the task is back in its own cgroup already, and no freezer
                // cgroup of ours holds it.
                Assert.Equal(cgroupBefore, File.ReadAllText($"/proc/{c.Pid}/cgroup"));
                Assert.DoesNotContain(Directory.EnumerateDirectories(Freezer.FreezerRoot()!), d => Path.GetFileName(d).StartsWith("criu-sharp-", StringComparison.Ordinal)
                    && File.Exists(Path.Combine(d, "cgroup.procs")) && File.ReadAllLines(Path.Combine(d, "cgroup.procs")).Contains(c.Pid.ToString()));
            }
            if (host.RegistersUnavailable is null)
            {
                var regs = host.GetRegisters(c.Pid);
                Assert.True(regs.General.Length >= 17);
                if (host.Capabilities.Arch == ArchFamily.X86_64)
                {
                    ulong rip = regs.General[0];
                    Assert.Contains(host.Maps(c.Pid).Split('\n'), l => l.Length > 0 && InRange(l, rip) && l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1].Contains('x'));
                }
            }
        }
        Assert.StartsWith("ok sum", c.ReadLine());
        Assert.True(c.Alive);
        Assert.DoesNotContain(RealChild.State(c.Pid), "tT");
        Assert.Equal(cgroupBefore, File.ReadAllText($"/proc/{c.Pid}/cgroup"));
        if (Freezer.FreezerRoot() is string fr)
            // (Other tests of this process may be freezing their own children right now.)
            Assert.DoesNotContain(Directory.EnumerateDirectories(fr), d => Path.GetFileName(d).StartsWith("criu-sharp-", StringComparison.Ordinal)
                && File.Exists(Path.Combine(d, "cgroup.procs")) && File.ReadAllLines(Path.Combine(d, "cgroup.procs")).Contains(c.Pid.ToString()));
        Assert.DoesNotContain("TracerPid:\t" + Environment.ProcessId, File.ReadAllText($"/proc/{c.Pid}/status"));
    }

    [Fact]
    public void SigstopFreeze_ThawsWithSigcont()
    {
        using var c = RealChild.Start(Programs.MemTouch, "8");
        Programs.ParseReady(c.ReadLine());
        using (var fz = Freezer.Freeze(c.Pid, preferCgroup: false))
        {
            Assert.Equal(FreezeMethod.SigStop, fz.Method);
            Assert.Equal('T', RealChild.State(c.Pid));
        }
        Assert.Equal("ok sum", c.Ask("sum")[..6]);
    }

    private static bool InRange(string mapsLine, ulong va)
    {
        var range = mapsLine.Split(' ')[0].Split('-');
        return Convert.ToUInt64(range[0], 16) <= va && va < Convert.ToUInt64(range[1], 16);
    }

    [Fact]
    public void MissingPid_IsEsrch()
    {
        using var host = new LinuxHost();
        int pid = FreePid();
        Assert.Null(host.FindTask(pid));
        Assert.Equal(Errno.ESRCH, Assert.Throws<KernelException>(() => host.Tree(pid)).Errno);
        Assert.Equal(Errno.ESRCH, Assert.Throws<KernelException>(() => host.Freeze(pid)).Errno);
    }

    /// <summary>A pid above every live one: pid_max is at least 32768 and this test machine's are far below that.</summary>
    public static int FreePid()
    {
        int max = int.Parse(File.ReadAllText("/proc/sys/kernel/pid_max").Trim());
        for (int p = max - 1; p > 1; p--)
            if (!Directory.Exists($"/proc/{p}"))
                return p;
        throw new InvalidOperationException("no free pid");
    }

    [Fact]
    public void Restore_IsRefused()
    {
        using var host = new LinuxHost();
        Assert.Throws<KernelNotSupportedException>(() => host.Spawn("x"));
        Assert.Equal(Errno.EOPNOTSUPP, host.WriteMemory(1, 0, new byte[1]).Error);
    }

    [Fact]
    public void SoftDirtyProbe_AgreesWithAPageWrittenAfterClearRefs()
    {
        // Whatever the kernel's config says: a page of a child written after clear_refs 4 must
        // read back soft-dirty exactly when the probe says soft-dirty works.
        using var c = RealChild.Start(Programs.MemTouch, "4");
        ulong a = Programs.ParseReady(c.ReadLine());
        using var host = new LinuxHost();
        Assert.True(host.ClearRefs(c.Pid, "4").Ok);
        c.Ask("fill 0 1 1 9");
        Span<ulong> e = stackalloc ulong[2];
        host.ReadPagemap(c.Pid, a, e, PagemapLayout.Modern);
        Assert.True(PagemapBits.IsPresent(e[1]));
        Assert.Equal(host.Capabilities.MemDirtyTrack, PagemapBits.IsSoftDirty(e[1]));
        Assert.False(PagemapBits.IsSoftDirty(e[0]) && !PagemapBits.IsSoftDirty(e[1]));
    }
}

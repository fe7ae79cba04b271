using System.Globalization;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.KernelApi;

namespace CriuSharp.HostKernel.Tests;

/// <summary>
/// A real multi-threaded process dumped through <see cref="LinuxHost"/>: every thread is seized
/// and gets its own core image with its own registers, as CRIU's dump_task_thread writes them.
/// </summary>
public sealed class HostThreadTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("criu-sharp-hostthreads-").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    [Fact]
    public void PthreadProgram_OneCorePerThread_WithItsOwnRegistersAndName_ProcessUnharmed()
    {
        using var c = RealChild.Start(Programs.Threads, "3");
        var ready = c.ReadLine().Split(' ');
        Assert.Equal("ready", ready[0]);
        var workers = ready[3..].Select(t => int.Parse(t, CultureInfo.InvariantCulture)).ToList();
        Assert.Equal("ok bump 1", c.Ask("bump 1"));
        string sum = c.Ask("sum");

        using var host = new LinuxHost();
        Assert.Equal([c.Pid, .. workers.Order()], host.Threads(c.Pid));
        string dir = Path.Combine(_root, "dump");
        var r = Criu.Dump(host, new DumpOptions { Pid = c.Pid, ImagesDir = dir, Tracker = TrackerKind.Content, LeaveRunning = true, AutoFallback = TrackerKind.Content });
        Assert.DoesNotContain(r.Warnings, w => w.Code == "registers-omitted");

        var set = ImageSet.Open(dir);
        Assert.Equal([(uint)c.Pid, .. workers.Order().Select(t => (uint)t)], set.ReadPstree().Single().Threads);
        var maps = File.ReadAllLines($"/proc/{c.Pid}/maps");
        var sps = new HashSet<ulong>();
        foreach (var (tid, i) in workers.Select((t, i) => (t, i)))
        {
            var core = set.ReadCore(tid);
            Assert.Null(core.Tc);
            Assert.Equal($"worker-{i}", core.ThreadCore.Comm);
            var regs = core.ThreadInfo.Gpregs;
            // Each worker sleeps in the kernel on its own stack, at an instruction of mapped code.
            Assert.Contains(maps, l => InRange(l, regs.Ip) && l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1].Contains('x'));
            Assert.Contains(maps, l => InRange(l, regs.Sp));
            Assert.True(sps.Add(regs.Sp), $"thread {tid} shares a stack pointer with another thread");
        }
        Assert.NotNull(set.ReadCore(c.Pid).Tc);
        Assert.True(c.Alive);
        Assert.Equal(sum, c.Ask("sum"));
        // Every worker still runs: each answers a bump after the dump.
        for (int i = 0; i < workers.Count; i++)
            Assert.Equal($"ok bump {i}", c.Ask($"bump {i}"));
        Assert.Equal(workers.Count + 1, Directory.GetDirectories($"/proc/{c.Pid}/task").Length);
    }

    private static bool InRange(string mapsLine, ulong va)
    {
        var range = mapsLine.Split(' ')[0].Split('-');
        return Convert.ToUInt64(range[0], 16) <= va && va < Convert.ToUInt64(range[1], 16);
    }
}

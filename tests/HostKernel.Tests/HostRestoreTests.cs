using System.Globalization;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.HostKernel.Tests;

/// <summary>A real process's images restored into a simulated machine.</summary>
public sealed class HostRestoreTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("criu-sharp-hostrestore-").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    /// <summary>
    /// maps lines as (start, end, prot, name, offset) with adjacent pieces of the same mapping
    /// joined: the simulator merges neighbouring VMAs that Linux keeps apart for reasons maps does
    /// not show (VM_ACCOUNT left by a RELRO mprotect), so layouts are compared page by page.
    /// [vvar], [vvar_vclock] and [vsyscall] are the kernel's and are left out.
    /// </summary>
    private static List<string> Layout(string maps)
    {
        var list = new List<(ulong S, ulong E, string Prot, string Name, ulong Off)>();
        foreach (var line in maps.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var f = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            string name = f.Length > 5 ? f[5].Trim() : "";
            if (name is "[vvar]" or "[vvar_vclock]" or "[vsyscall]")
                continue;
            var r = f[0].Split('-');
            ulong s = ulong.Parse(r[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture), e = ulong.Parse(r[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            ulong off = name.StartsWith('/') ? ulong.Parse(f[2], NumberStyles.HexNumber, CultureInfo.InvariantCulture) : 0;
            if (list.Count > 0 && list[^1] is var l && l.E == s && l.Prot == f[1] && l.Name == name && (!name.StartsWith('/') || l.Off + (l.E - l.S) == off))
                list[^1] = (l.S, e, l.Prot, l.Name, l.Off);
            else
                list.Add((s, e, f[1], name, off));
        }
        return list.Select(x => $"{x.S:x}-{x.E:x} {x.Prot} {x.Off:x} {x.Name}").ToList();
    }

    [Fact]
    public void RealProcess_RestoredIntoASimulatedMachine_SameVmasAndPages()
    {
        using var c = RealChild.Start(Programs.MemTouch, "64");
        Programs.ParseReady(c.ReadLine());
        using var host = new LinuxHost();
        var o = new DumpOptions { Pid = c.Pid, ImagesDir = Path.Combine(_root, "1"), Tracker = TrackerKind.Content };
        Criu.PreDump(host, o);
        c.Ask("fill 0 2 4 5");
        c.Ask("map 1 8");
        Criu.PreDump(host, o with { ImagesDir = Path.Combine(_root, "2"), PrevImagesDir = "../1" });
        c.Ask("brk 3");
        string dump = Path.Combine(_root, "3");
        Criu.Dump(host, o with { ImagesDir = dump, PrevImagesDir = "../2", LeaveRunning = true, TrackMem = true });
        string hostMaps = File.ReadAllText($"/proc/{c.Pid}/maps");

        var k = new Kernel(new KernelConfig());
        foreach (var (path, _) in Criu.RealHostFiles(dump))
            k.Fs.Create(path, File.ReadAllBytes(path));
        var sim = new SimKernelAdapter(k);
        var r = Criu.Restore(sim, new RestoreOptions { ImagesDir = dump, Verify = true });
        Assert.Equal([c.Pid], r.Pids);
        Assert.True(r.Stats.VmasVerified > 5);

        Assert.Equal(Layout(hostMaps), Layout(sim.Maps(c.Pid)));
        using var reader = ImageSet.Open(dump).OpenPageReader(c.Pid);
        var simPage = new byte[4096];
        int pages = 0;
        foreach (var e in reader.Pagemap.Entries)
            for (ulong i = 0; i < PagemapImage.NrPages(e); i++)
            {
                ulong va = e.Vaddr + (i << 12);
                Assert.True(sim.ReadMemory(c.Pid, va, simPage).Ok);
                Assert.True(c.ReadMem(va, 4096).AsSpan().SequenceEqual(simPage), $"page 0x{va:x} differs after restore");
                pages++;
            }
        Assert.True(pages > 64);
        Assert.True(c.Alive);
    }

    [Fact]
    public void RestoreIntoTheRealHost_IsRefused()
    {
        using var host = new LinuxHost();
        Assert.Throws<KernelApi.KernelNotSupportedException>(() => Criu.Restore(host, new RestoreOptions { ImagesDir = _root }));
    }
}

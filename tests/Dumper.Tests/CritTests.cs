using System.Diagnostics;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Dumper.Tests;

/// <summary>CRIU's own crit reads what a full dump writes.</summary>
public class CritTests
{
    private static (int Code, string Out) Crit(params string[] args)
    {
        var psi = new ProcessStartInfo("/usr/bin/crit", args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, o);
    }

    [Fact]
    public void Crit_DecodesAFullDump_AndExploresIt()
    {
        Assert.True(File.Exists("/usr/bin/crit"), "/usr/bin/crit is missing: install Debian's criu package (run-tests.sh does)");
        var k = RoundTrip.NewKernel();
        Procs.Rich(k, 950);
        k.Fork(k.FindTask(950)!, 951);
        var dir = RoundTrip.NewDir("crit");
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 950, ImagesDir = dir, PageStore = PageStoreOptions.Raw });
        foreach (var img in new[] { "inventory.img", "pstree.img", "core-950.img", "mm-950.img", "pagemap-950.img", "files.img", "stats-dump" })
        {
            var (code, o) = Crit("decode", "-i", Path.Combine(dir, img));
            Assert.True(code == 0, $"{img}: {o}");
        }
        var ps = Crit("x", dir, "ps");
        Assert.True(ps.Code == 0, ps.Out);
        Assert.Contains("rich", ps.Out);
        Assert.Contains("951", ps.Out);
        var mems = Crit("x", dir, "mems");
        Assert.True(mems.Code == 0, mems.Out);
        Assert.Contains("/data/blob", mems.Out);
        var rss = Crit("x", dir, "rss");
        Assert.True(rss.Code == 0, rss.Out);
    }
}

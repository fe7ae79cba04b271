using System.Text.RegularExpressions;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// CRIU's zdtm cycle over every sample workload: start, let it run, N pre-dumps (the workload
/// running between them), dump, restore on a fresh host, byte-identical memory, the workload's
/// own self-check, then the workload runs on at the destination and checks itself again.
/// The samples are loaded at 1/16 of their size so the whole matrix stays quick.
/// </summary>
public class ZdtmMatrixTests
{
    private static readonly string[] Samples =
        ["uniform", "hotcold", "sequential", "kvstore", "churn", "fork", "swap", "thp", "idle", "threads", "hugetlb"];

    public static TheoryData<string, int, string, string> Matrix()
    {
        var data = new TheoryData<string, int, string, string>();
        foreach (var s in Samples)
            foreach (int pre in new[] { 0, 1, 3, 8 })
                foreach (var comp in new[] { "lz4", "none" })
                    foreach (var arch in new[] { "x86_64", "arm64" })
                        data.Add(s, pre, comp, arch);
        return data;
    }

    private static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "criu-sharp.sln")))
            d = d.Parent;
        return d!.FullName;
    }

    /// <summary>The sample with sizes and key counts divided by 16.</summary>
    private static byte[] Scaled(string sample)
    {
        string text = File.ReadAllText(Path.Combine(RepoRoot(), "samples", sample + ".json"));
        text = Regex.Replace(text, "\"size\"\\s*:\\s*\"(\\d+)MiB\"",
            m => $"\"size\": \"{Math.Max(2, int.Parse(m.Groups[1].Value) / 16)}MiB\"");
        text = Regex.Replace(text, "\"keys\"\\s*:\\s*(\\d+)", m => $"\"keys\": {int.Parse(m.Groups[1].Value) / 16}");
        return System.Text.Encoding.UTF8.GetBytes(text);
    }

    [Theory]
    [MemberData(nameof(Matrix))]
    public void DumpRestoreVerify(string sample, int preDumps, string compression, string arch)
    {
        // The hugetlb sample needs a pool on both hosts (nr_hugepages at boot; the destination copies the config).
        var source = new LiveHost(RoundTrip.NewKernel(arch, hugePages: sample == "hugetlb" ? 4 : 0));
        var spec = WorkloadSpec.Parse(source.Kernel, sample + ".json", Scaled(sample));
        var tasks = WorkloadApi.Spawn(source.Kernel, spec);
        int root = tasks[0].Pid;
        source.Advance(30_000_000);
        string dir = RoundTrip.NewDir($"zdtm-{sample}-{preDumps}-{compression}-{arch}");
        try
        {
            var store = compression == "none" ? PageStoreOptions.Raw : PageStoreOptions.Lz4();
            var (steps, restore, dest) = RoundTrip.DumpRestore(source, root, preDumps, store,
                between: _ => source.Advance(10_000_000), baseDir: dir);
            Assert.Equal(preDumps + 1, steps.Count);
            Assert.True(restore.Stats.VmasVerified > 0);
            var destination = new LiveHost(dest);
            foreach (var t in dest.Tree(root).Where(WorkloadApi.HasProgram))
            {
                var report = WorkloadApi.Verify(t);
                Assert.True(report.Ok, $"after restore: {report}");
            }
            destination.Advance(20_000_000);
            foreach (var t in dest.Tree(root).Where(t => t.Alive && WorkloadApi.HasProgram(t)))
            {
                var report = WorkloadApi.Verify(t);
                Assert.True(report.Ok, $"after running on: {report}");
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}

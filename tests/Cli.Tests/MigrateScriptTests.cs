using System.Diagnostics;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>samples/migrate.sh end to end: separate processes on two machine directories.</summary>
public class MigrateScriptTests
{
    // 4 MiB with 90 % of the writes on 1 % of the pages: the second pre-dump is tiny and P.Haul's
    // "small dump" rule stops the loop, which keeps the number of processes started low.
    private const string Workload = """
        { "seed": 3, "processes": [ { "name": "hot",
            "mappings": [ { "name": "heap", "size": "4MiB" } ],
            "behaviour": { "type": "hotcold", "mapping": "heap", "distribution": "hot", "hot_fraction": 0.01, "hot_share": 1.0, "pages_per_second": 5000, "prefill": true } } ] }
        """;

    [Fact]
    public async Task ScriptMigratesAndVerifiesOnTheDestination()
    {
        string work = Path.Combine(Path.GetTempPath(), "criu-sharp-migsh-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(work);
        try
        {
            string wl = Path.Combine(work, "hot.json");
            File.WriteAllText(wl, Workload);
            var psi = new ProcessStartInfo("bash") { WorkingDirectory = CliRunner.RepoRoot(), RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add("samples/migrate.sh");
            psi.ArgumentList.Add(wl);
            psi.Environment["CRIU_SHARP"] = "dotnet " + Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
            psi.Environment["WORK"] = work;
            psi.Environment["WARMUP"] = "50ms";
            psi.Environment.Remove("CRIU_SHARP_MACHINE");
            using var p = Process.Start(psi)!;
            var err = p.StandardError.ReadToEndAsync();
            string output = p.StandardOutput.ReadToEnd();
            if (!p.WaitForExit(120_000))
            {
                p.Kill(true);
                throw new TimeoutException("samples/migrate.sh did not finish in 120 s");
            }
            Assert.True(p.ExitCode == 0, output + await err);
            Assert.Contains("pre-dump 1: ", output);
            Assert.Contains("pre-dump 2: ", output);
            Assert.Matches(@"stop: small dump \(\d+ <= 64 pages\)", output);
            Assert.Matches(@"(?m)^\d+ hotcold: ok", output);
            Assert.Equal(2, output.Split('\n').Count(l => l.Contains("hotcold: ok")));
            Assert.True(File.Exists(Path.Combine(work, "img", "3", "inventory.img")));
            Assert.Equal("../2", new FileInfo(Path.Combine(work, "img", "3", "parent")).LinkTarget);
        }
        finally
        {
            Directory.Delete(work, true);
        }
    }
}

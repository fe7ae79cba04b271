using System.Diagnostics;
using System.Text.Json;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// Debian's crit decodes and re-encodes every image of a pre-dump chain it can read; the images
/// come back byte for byte (CRIU's images hold CRIU's fields only), and the chain still restores
/// a process that passes its own memory check.
/// </summary>
public class CritRoundTripTests
{
    private const string Python = "/usr/bin/python3";

    // crit's own entry point (pycriu.cli.main, what /usr/bin/crit runs), driven in one interpreter
    // so decoding some forty files does not start Python eighty times.
    private const string Driver = """
        import os, sys
        from pycriu import cli
        for f in sys.argv[1:]:
            j = f + '.json'
            try:
                sys.argv = ['crit', 'decode', '-i', f, '-o', j]
                cli.main()
            except SystemExit:
                if os.path.exists(j):
                    os.remove(j)
                print('REJECTED', os.path.basename(f))
                continue
            sys.argv = ['crit', 'encode', '-i', j, '-o', f]
            cli.main()
            os.remove(j)
            print('OK', os.path.basename(f))
        """;

    [Theory]
    [InlineData("none")]
    [InlineData("lz4")]
    public async Task CritDecodeEncode_OfEveryImage_IsLossless_AndTheChainRestores(string compress)
    {
        // Debian's criu package provides both; run-tests.sh installs it.
        Assert.True(File.Exists("/usr/bin/crit") && File.Exists(Python), "/usr/bin/crit or Debian's python3 with pycriu is missing: install the criu package");
        using var s = new MigrateScratch();
        using var m = new TempMachine();
        string chain = Path.Combine(s.Dir, "chain");
        var spawn = CliRunner.Run("spawn", s.Workload, "--machine", m.Dir, "--json");
        Assert.True(spawn.Code == 0, spawn.Err);
        string pid = JsonDocument.Parse(spawn.Out).RootElement.GetProperty("pids")[0].GetInt32().ToString();
        string[] dirs = ["1", "2", "3"];
        foreach (var (d, i) in dirs.Select((d, i) => (d, i)))
        {
            Assert.Equal(0, CliRunner.Run("run", "--for", "30ms", "--machine", m.Dir).Code);
            string[] prev = i == 0 ? [] : ["--prev-images-dir", "../" + dirs[i - 1]];
            var r = CliRunner.Run([i < 2 ? "pre-dump" : "dump", "-t", pid, "-D", Path.Combine(chain, d), "--compress", compress, "--machine", m.Dir, .. prev]);
            Assert.True(r.Code == 0, r.Err);
        }

        var files = dirs.SelectMany(d => Directory.GetFiles(Path.Combine(chain, d)))
            .Where(f => Path.GetFileName(f) is var n && !n.StartsWith("pages-") && !n.StartsWith('.') && n != "criu-sharp.manifest")
            .ToList();
        var before = files.ToDictionary(f => f, File.ReadAllBytes);
        var psi = new ProcessStartInfo(Python) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(Driver);
        foreach (var f in files) psi.ArgumentList.Add(f);
        using (var p = Process.Start(psi)!)
        {
            var err = p.StandardError.ReadToEndAsync();
            string outText = await p.StandardOutput.ReadToEndAsync();
            await p.WaitForExitAsync();
            Assert.True(p.ExitCode == 0, outText + await err);
            var lines = outText.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            // crit reads every CRIU image, and only our sidecars (own magic) are refused.
            Assert.All(lines.Where(l => l.StartsWith("REJECTED ")), l => Assert.Matches("^REJECTED (ext-|sim-)", l));
            foreach (var core in new[] { "inventory.img", "pstree.img", $"core-{pid}.img", $"mm-{pid}.img", $"pagemap-{pid}.img", "stats-dump" })
                Assert.Contains($"OK {core}", lines);
            Assert.Equal(dirs.Length, lines.Count(l => l == $"OK pagemap-{pid}.img"));
        }
        foreach (var (f, bytes) in before)
        {
            var expected = bytes;
            if (Path.GetFileName(f).StartsWith("pagemap-"))
            {
                // crit 3.17.1 predates CRIU 4.2's pagemap_entry.nr_pages (field 5) and drops it;
                // field 2 holds the same count, so only that field may go.
                var entries = ImageFormat.ImageFile.Parse(bytes, f, ImageFormat.ImageKind.Pagemap).Entries;
                foreach (var e in entries.OfType<ImageFormat.Images.pagemap_entry>())
                    e.ClearNrPages64();
                expected = ImageFormat.ImageFile.Serialize(ImageFormat.ImageKind.Pagemap, entries);
            }
            Assert.True(expected.AsSpan().SequenceEqual(File.ReadAllBytes(f)), $"{Path.GetRelativePath(chain, f)} changed in a crit decode/encode round trip");
        }

        using var dest = new TempMachine();
        var restore = CliRunner.Run("restore", "-D", Path.Combine(chain, "3"), "--machine", dest.Dir, "--json");
        Assert.True(restore.Code == 0, restore.Err);
        Assert.True(JsonDocument.Parse(restore.Out).RootElement.GetProperty("stats").GetProperty("vmas_verified").GetInt32() > 0);
        var verify = CliRunner.Run("verify", "-t", pid, "--machine", dest.Dir);
        Assert.True(verify.Code == 0, verify.Out + verify.Err);
    }
}

using System.Diagnostics;
using Xunit;
using Xunit.Abstractions;

namespace CriuSharp.Cli.Tests;

/// <summary>samples/netns-migrate.sh: a lazy migration, or migrate --transport tcp, between two network namespaces over a tbf-shaped veth pair.</summary>
public class NetnsMigrateTests(ITestOutputHelper log)
{
    /// <summary>Whether this host lets us create a network namespace (root, ip netns); the probe is removed again.</summary>
    private static bool CanCreateNetns()
    {
        string name = "cs-probe-" + Guid.NewGuid().ToString("N")[..8];
        static int Ip(params string[] args)
        {
            var psi = new ProcessStartInfo("ip") { RedirectStandardError = true, RedirectStandardOutput = true };
            foreach (var a in args) psi.ArgumentList.Add(a);
            try
            {
                using var p = Process.Start(psi)!;
                return p.WaitForExit(10_000) ? p.ExitCode : -1;
            }
            catch (System.ComponentModel.Win32Exception)
            {
                return -1; // no ip(8)
            }
        }
        if (Ip("netns", "add", name) != 0)
            return false;
        Ip("netns", "del", name);
        return true;
    }

    [Fact]
    public async Task ScriptMigratesLazilyAcrossNamespaces_AndCleansUp()
    {
        if (!CanCreateNetns())
        {
            log.WriteLine("skipped: this host cannot create network namespaces (needs root and ip netns)");
            return;
        }
        string output = await RunScript();
        Assert.Contains("the daemon closed the session", output);
        Assert.Matches(@"(?m)^\d+ hotcold: ok", output);
    }

    [Fact]
    public async Task ScriptMigratesOverTcpAcrossNamespaces_HybridVerifies()
    {
        if (!CanCreateNetns())
        {
            log.WriteLine("skipped: this host cannot create network namespaces (needs root and ip netns)");
            return;
        }
        string output = await RunScript(("TRANSPORT", "migrate"), ("MODE", "hybrid"));
        Assert.Matches(@"destination: migrate-service listening on 10\.\d+\.\d+\.2:\d+", output);
        Assert.Matches(@"transport +tcp: destination at 10\.", output);
        Assert.Matches(@"post-copy +\d+ lazy pages", output);
        Assert.Matches(@"verification +ok", output);
        Assert.Matches(@"(?m)^\d+ hotcold: ok", output);
    }

    /// <summary>Runs the script over a tbf-shaped link; checks it cleaned up; returns its output.</summary>
    private static async Task<string> RunScript(params (string Name, string Value)[] env)
    {
        var psi = new ProcessStartInfo("bash") { WorkingDirectory = CliRunner.RepoRoot(), RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("samples/netns-migrate.sh");
        psi.ArgumentList.Add("100mbit");
        psi.ArgumentList.Add("32kbit");
        psi.Environment["CRIU_SHARP"] = "dotnet " + Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        psi.Environment["TIMEOUT"] = "60";
        psi.Environment.Remove("CRIU_SHARP_MACHINE");
        psi.Environment.Remove("WORK");
        foreach (var (name, value) in env)
            psi.Environment[name] = value;
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        var outTask = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(180_000))
        {
            p.Kill(true);
            throw new TimeoutException("samples/netns-migrate.sh did not finish in 180 s");
        }
        string output = await outTask;
        Assert.True(p.ExitCode == 0, output + await err);
        var created = System.Text.RegularExpressions.Regex.Match(output, @"created network namespaces (cs-src-\w+) .* and (cs-dst-\w+) ");
        Assert.True(created.Success, output);
        Assert.Contains($"removed network namespaces {created.Groups[1].Value} and {created.Groups[2].Value}", output);
        // Nothing left behind.
        var ls = Process.Start(new ProcessStartInfo("ip", "netns list") { RedirectStandardOutput = true })!;
        string left = await ls.StandardOutput.ReadToEndAsync();
        ls.WaitForExit();
        Assert.DoesNotContain(created.Groups[1].Value, left);
        Assert.DoesNotContain(created.Groups[2].Value, left);
        return output;
    }
}

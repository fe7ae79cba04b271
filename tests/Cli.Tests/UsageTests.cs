using System.CommandLine;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>Every command, every bad argument: one line, a hint, a documented exit code, no stack.</summary>
public class UsageTests
{
    private static IEnumerable<Command> Walk(Command c)
    {
        yield return c;
        foreach (var s in c.Subcommands)
            foreach (var x in Walk(s))
                yield return x;
    }

    private static string[] PathOf(Command root, Command target)
    {
        foreach (var s in root.Subcommands)
        {
            if (s == target) return [s.Name];
            var sub = PathOf(s, target);
            if (sub.Length > 0) return [s.Name, .. sub];
        }
        return [];
    }

    public static TheoryData<string> AllCommands()
    {
        var data = new TheoryData<string>();
        var root = CliApp.BuildRoot();
        foreach (var c in Walk(root).Skip(1))
            data.Add(string.Join(' ', PathOf(root, c)));
        return data;
    }

    [Theory]
    [MemberData(nameof(AllCommands))]
    public void UnknownOption_GivesUsageExitAndOneLinePlusHint(string command)
    {
        var r = CliRunner.Run([.. command.Split(' '), "--no-such-option"]);
        Assert.Equal((int)ExitCode.Usage, r.Code);
        Assert.Equal(2, r.ErrLines.Length);
        Assert.StartsWith("criu-sharp: ", r.ErrLines[0]);
        Assert.Contains("--help", r.ErrLines[1]);
        Assert.DoesNotContain("   at ", r.Err);
    }

    [Theory]
    [MemberData(nameof(AllCommands))]
    public void Help_Works(string command)
    {
        var r = CliRunner.Run([.. command.Split(' '), "--help"]);
        Assert.Equal(0, r.Code);
        Assert.Contains("Usage:", r.Out);
    }

    [Fact]
    public void MissingRequiredPid_IsUsage()
    {
        var r = CliRunner.Run("maps");
        Assert.Equal((int)ExitCode.Usage, r.Code);
        Assert.Contains("--tree", r.Err);
    }

    [Fact]
    public void UnknownVerb_IsUsage() => Assert.Equal((int)ExitCode.Usage, CliRunner.Run("frobnicate").Code);

    [Fact]
    public void BadDuration_IsUsage()
    {
        using var m = new TempMachine();
        Assert.Equal((int)ExitCode.BadInput, CliRunner.Run("run", "--for", "2s", "--machine", m.Dir).Code); // no machine yet
        var r = CliRunner.Run("run", "--for", "2 parsecs", "--machine", m.Dir);
        Assert.NotEqual(0, r.Code);
        Assert.Single(r.ErrLines, l => l.StartsWith("criu-sharp:"));
    }

    [Fact]
    public void Check_FeatureMissingOnArm64_ExitsUnsupported()
    {
        using var m = new TempMachine();
        Assert.Equal((int)ExitCode.Unsupported, CliRunner.Run("check", "--feature", "mem_dirty_track", "--arch", "arm64", "--machine", m.Dir).Code);
        Assert.Equal(0, CliRunner.Run("check", "--feature", "uffd_wp", "--arch", "arm64", "--machine", m.Dir).Code);
    }
}

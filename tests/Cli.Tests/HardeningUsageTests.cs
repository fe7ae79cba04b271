using System.CommandLine;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// The command-tree walk for bad arguments: every verb with a required option or argument, every
/// numeric option given garbage, every verb taking a pid given an unknown one, every path that does
/// not exist. Each must give its documented exit code, one error line (plus an optional hint), no stack.
/// </summary>
public sealed class HardeningUsageTests : IDisposable
{
    private readonly string _root = Path.Combine("/dev/shm", "criu-sharp-usage-" + Guid.NewGuid().ToString("N"));
    private readonly string _machine;

    public HardeningUsageTests()
    {
        Directory.CreateDirectory(_root);
        string wl = Path.Combine(_root, "wl.json");
        File.WriteAllText(wl, FuzzSupport.SmallWorkload(2));
        _machine = Path.Combine(_root, "m");
        Assert.Equal(0, CliRunner.Run("spawn", wl, "-m", _machine, "--memory", "64MiB").Code);
    }

    public void Dispose() => Directory.Delete(_root, true);

    private static IEnumerable<(string Path, Command C)> Leaves()
    {
        var root = CliApp.BuildRoot();
        var stack = new Stack<(string, Command)>(root.Subcommands.Select(s => (s.Name, s)));
        while (stack.Count > 0)
        {
            var (p, c) = stack.Pop();
            if (c.Subcommands.Count == 0) yield return (p, c);
            foreach (var s in c.Subcommands) stack.Push(($"{p} {s.Name}", s));
        }
    }

    private static void AssertOneLine(CliRunner.Result r, string what)
    {
        Assert.False(r.Err.Contains("   at "), $"{what}: stack trace\n{r.Err}");
        Assert.True(r.ErrLines.Length is 1 or 2, $"{what}: {r.ErrLines.Length} lines\n{r.Err}");
        Assert.StartsWith("criu-sharp: ", r.ErrLines[0]);
    }

    private static bool IsNumeric(Type t)
    {
        t = Nullable.GetUnderlyingType(t) ?? t;
        return t == typeof(int) || t == typeof(long) || t == typeof(ulong) || t == typeof(double);
    }

    [Fact]
    public void MissingRequired_IsUsage()
    {
        int n = 0;
        foreach (var (path, c) in Leaves())
        {
            if (!c.Options.Any(o => o.Required) && !c.Arguments.Any(a => a.Arity.MinimumNumberOfValues > 0))
                continue;
            var r = CliRunner.Run([.. path.Split(' '), "-m", _machine]);
            Assert.True(r.Code == (int)ExitCode.Usage, $"{path} with nothing: exit {r.Code}\n{r.Err}");
            AssertOneLine(r, path);
            n++;
        }
        Assert.True(n >= 8, $"only {n} verbs have required input");
    }

    [Fact]
    public void MalformedNumbers_AreUsage()
    {
        int n = 0;
        foreach (var (path, c) in Leaves())
            foreach (var o in c.Options.Where(o => IsNumeric(o.ValueType)))
            {
                var r = CliRunner.Run([.. path.Split(' '), o.Name, "12x"]);
                Assert.True(r.Code == (int)ExitCode.Usage, $"{path} {o.Name} 12x: exit {r.Code}\n{r.Err}");
                AssertOneLine(r, $"{path} {o.Name}");
                n++;
            }
        Assert.True(n >= 10, $"only {n} numeric options");
    }

    /// <summary>Values for the required options of a verb, so only the one under test is wrong.</summary>
    private string[] Fill(Command c, string except)
    {
        var args = new List<string>();
        foreach (var a in c.Arguments.Where(a => a.Arity.MinimumNumberOfValues > 0))
            args.Add(a.Name switch
            {
                "value" => "4",
                "file" => Path.Combine(_root, "wl.json"),
                _ => throw new InvalidOperationException($"no value for argument {a.Name}"),
            });
        foreach (var o in c.Options.Where(o => o.Required && o.Name != except))
            args.AddRange(o.Name switch
            {
                "--tree" => ["--tree", "1000"],
                "--images-dir" => ["--images-dir", Path.Combine(_root, "img-" + Guid.NewGuid().ToString("N"))],
                _ => throw new InvalidOperationException($"no value for required {o.Name}"),
            });
        return [.. args];
    }

    [Fact]
    public void AValueOutsideAnOptionsChoices_NamesTheChoicesInItsOneLine()
    {
        var r = CliRunner.Run("migrate", "-w", "samples/hotcold.json", "--transport", "carrier-pigeon");
        Assert.Equal((int)ExitCode.Usage, r.Code);
        AssertOneLine(r, "migrate --transport");
        Assert.Contains("carrier-pigeon", r.ErrLines[0]);
        Assert.Contains("inproc", r.ErrLines[0]);
        Assert.Contains("tcp", r.ErrLines[0]);
    }

    [Fact]
    public void UnknownPid_IsBadInput()
    {
        int n = 0;
        foreach (var (path, c) in Leaves())
        {
            if (c.Options.FirstOrDefault(o => o.Name == "--tree") is null || c.Options.Any(o => o.Required && o.Name is not ("--tree" or "--images-dir"))
                || c.Arguments.Any(a => a.Arity.MinimumNumberOfValues > 0 && a.Name is not ("value" or "file")))
                continue;
            var r = CliRunner.Run([.. path.Split(' '), "--tree", "4242", .. Fill(c, "--tree"), "-m", _machine, "--wait", "5"]);
            Assert.True(r.Code == (int)ExitCode.BadInput, $"{path} --tree 4242: exit {r.Code}\n{r.Err}");
            AssertOneLine(r, path);
            Assert.Contains("4242", r.ErrLines[0]);
            n++;
        }
        Assert.True(n >= 7, $"only {n} verbs take a pid");
    }

    [Fact]
    public void PathsThatDoNotExist_AreBadInput()
    {
        string nowhere = Path.Combine(_root, "does", "not", "exist");
        int n = 0;
        foreach (var (path, c) in Leaves())
        {
            var words = path.Split(' ');
            // A missing machine, for every verb that works on one without creating it.
            if (c.Options.Any(o => o.Name == "--machine") && !c.Options.Any(o => o.Required && o.Name is not ("--tree" or "--images-dir"))
                && !c.Arguments.Any(a => a.Arity.MinimumNumberOfValues > 0 && a.Name is not ("value" or "file"))
                && path is not ("spawn" or "restore" or "check" or "selftest"))
            {
                string[] extra = path == "run" ? ["--steps", "1"] : []; // run needs one of --for/--steps
                var r = CliRunner.Run([.. words, .. Fill(c, ""), .. extra, "-m", nowhere]);
                Assert.True(r.Code == (int)ExitCode.BadInput, $"{path} -m {nowhere}: exit {r.Code}\n{r.Err}");
                AssertOneLine(r, path);
                n++;
            }
            // A missing file or image directory given as the verb's input.
            var arg = c.Arguments.FirstOrDefault(a => a.Arity.MinimumNumberOfValues > 0);
            if (arg is not null && c.Arguments.Count == 1 && !c.Options.Any(o => o.Required))
            {
                var r = CliRunner.Run([.. words, nowhere, "-m", _machine]);
                if (r.Code != (int)ExitCode.Usage) // verbs whose argument is not a path reject it as usage
                {
                    Assert.True(r.Code == (int)ExitCode.BadInput, $"{path} {nowhere}: exit {r.Code}\n{r.Err}");
                    AssertOneLine(r, path);
                    n++;
                }
            }
        }
        var restore = CliRunner.Run("restore", "-D", nowhere, "-m", Path.Combine(_root, "dest"));
        Assert.Equal((int)ExitCode.BadInput, restore.Code);
        AssertOneLine(restore, "restore");
        Assert.True(n >= 10, $"only {n} cases");
    }
}

using System.CommandLine;
using System.Text.Json;
using System.Text.RegularExpressions;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// Walks every verb that offers --json, found in the command tree (so verbs added later are walked
/// without touching this test), and checks one dialect: an object at the top, snake_case keys,
/// times only in nanoseconds named *_ns, never a .NET time string, the images directory only as
/// images_dir, and failures as {"error": {"exit_code", "message"}} on stderr.
/// </summary>
public class JsonDialectTests : IClassFixture<JsonDialectTests.Scene>
{
    private static readonly HashSet<string> Servers = ["page-server", "service", "swrk", "lazy-pages", "migrate-service"];

    private static readonly string[] CoreVerbs = ["spawn", "run", "ps", "verify", "pre-dump", "dump", "restore", "check", "pagemap", "x", "migrate", "compare", "selftest"];

    /// <summary>A machine with a running workload, a pre-dump and a dump on top of it.</summary>
    public sealed class Scene : IDisposable
    {
        public MigrateScratch Scratch { get; } = new();
        public TempMachine Machine { get; } = new();
        public string Pid { get; }
        public string Chain => Path.Combine(Scratch.Dir, "chain");
        public string FullDump => Path.Combine(Chain, "2");
        private int _fresh;

        public Scene()
        {
            var spawn = CliRunner.Run("spawn", Scratch.Workload, "--machine", Machine.Dir, "--json");
            Assert.True(spawn.Code == 0, spawn.Err);
            Pid = JsonDocument.Parse(spawn.Out).RootElement.GetProperty("pids")[0].GetInt32().ToString();
            Assert.Equal(0, CliRunner.Run("pre-dump", "-t", Pid, "-D", Path.Combine(Chain, "1"), "--machine", Machine.Dir).Code);
            Assert.Equal(0, CliRunner.Run("dump", "-t", Pid, "-D", FullDump, "--prev-images-dir", "../1", "--leave-running", "--machine", Machine.Dir).Code);
        }

        /// <summary>A path that does not exist yet, for verbs that create something.</summary>
        public string Fresh(string what) => Path.Combine(Scratch.Dir, $"{what}-{Interlocked.Increment(ref _fresh)}");

        public void Dispose()
        {
            Machine.Dispose();
            Scratch.Dispose();
        }
    }

    private readonly Scene _s;
    public JsonDialectTests(Scene s) => _s = s;

    private static IEnumerable<(string[] Path, Command Command)> JsonVerbs(Command c, string[] path)
    {
        if (c.Options.Any(o => o.Name == "--json"))
            yield return (path, c);
        foreach (var sub in c.Subcommands)
            foreach (var v in JsonVerbs(sub, [.. path, sub.Name]))
                yield return v;
    }

    /// <summary>Arguments for a verb, from the names of its arguments and options.</summary>
    private string[] ArgsFor(string[] path, Command c)
    {
        string verb = string.Join(' ', path);
        var args = new List<string>(path);
        // Verbs whose defaults would run for long get short settings; anything else is derived.
        switch (verb)
        {
            case "migrate":
                return [.. args, .. _s.Scratch.Args("--policy", "fixed:1")];
            case "compare":
                return [.. args, .. _s.Scratch.Args("--policies", "none")];
            case "run":
                return [.. args, "--for", "1ms", "--machine", _s.Machine.Dir];
            case "restore":
                return [.. args, "-D", _s.FullDump, "--machine", _s.Fresh("machine")];
            case "fuzz images":
                return [.. args, "--count", "3"];
            case "fuzz run":
                return [.. args, "--rounds", "1"];
        }
        foreach (var a in c.Arguments.Where(a => a.Arity.MinimumNumberOfValues > 0))
            args.Add(a.Name switch
            {
                "file" or "workload" => _s.Scratch.Workload,
                "dir" => _s.FullDump,
                "what" => "stats",
                "value" => "4",
                _ => "x",
            });
        foreach (var o in c.Options)
        {
            string? value = o.Name switch
            {
                "--tree" => _s.Pid,
                "--machine" => _s.Machine.Dir,
                "--images-dir" when path[0] is "dump" or "pre-dump" => _s.Fresh("images"),
                "--images-dir" => _s.FullDump,
                "--workload" => _s.Scratch.Workload,
                _ => null,
            };
            if (value is not null && (o.Required || o.Name is "--tree" or "--machine" or "--images-dir" or "--workload"))
                args.AddRange([o.Name, value]);
        }
        if (verb == "dump")
            args.Add("--leave-running");
        return [.. args];
    }

    [Fact]
    public void EveryVerbsJson_FollowsOneDialect()
    {
        var verbs = JsonVerbs(CliApp.BuildRoot(), []).Where(v => v.Path.Length > 0).ToList();
        var succeeded = new List<string>();
        var problems = new List<string>();
        foreach (var (path, command) in verbs)
        {
            string verb = string.Join(' ', path);
            // Servers answer until they are stopped: only their refusals are walked here (their
            // own tests drive them with a client).
            if (!Servers.Contains(verb))
            {
                var args = ArgsFor(path, command);
                var r = CliRunner.Run([.. args, "--json"]);
                if (r.Code == 0)
                {
                    succeeded.Add(verb);
                    Check(verb, r.Out, problems);
                }
                else
                    CheckError(verb, r, problems);
            }

            // A failure of the same verb, under --json, is a JSON object on stderr as well.
            var bad = CliRunner.Run([.. path, "--no-such-option", "--json"]);
            CheckError(verb + " (bad option)", bad, problems);
        }
        Assert.True(problems.Count == 0, string.Join('\n', problems));
        // The walk must have seen real output, not only errors.
        var missing = CoreVerbs.Except(succeeded).ToList();
        Assert.True(missing.Count == 0, $"no JSON output walked for {string.Join(", ", missing)} (walked: {string.Join(", ", succeeded)})");
    }

    [Fact]
    public void DisplayStatsWithJson_GivesBoth()
    {
        var r = CliRunner.Run("dump", "-t", _s.Pid, "-D", _s.Fresh("images"), "--leave-running", "--machine", _s.Machine.Dir, "--json", "--display-stats");
        Assert.True(r.Code == 0, r.Err);
        Assert.True(JsonDocument.Parse(r.Out).RootElement.GetProperty("stats").TryGetProperty("frozen_time_ns", out _));
        Assert.Contains("Displaying dump stats:", r.Err);
        Assert.Contains("Frozen time:", r.Err);
    }

    private static readonly Regex SnakeCase = new("^[a-z][a-z0-9_]*$");
    private static readonly Regex TimeLike = new("(time|duration|latency|elapsed|uptime|downtime|_us$|_ms$|_sec$|_secs$|_seconds$)");
    private static readonly Regex NetTimeSpan = new(@"^-?(\d+\.)?\d{1,2}:\d{2}:\d{2}(\.\d{1,7})?$");
    private static readonly Regex DirKey = new("(^|_)(dir|directory|images|imgs|img_dir|image_dir|image_directory)$");

    private static void Check(string verb, string stdout, List<string> problems)
    {
        JsonElement root;
        try
        {
            root = JsonDocument.Parse(stdout).RootElement;
        }
        catch (JsonException e)
        {
            problems.Add($"{verb}: stdout is not JSON ({e.Message})");
            return;
        }
        if (root.ValueKind != JsonValueKind.Object)
            problems.Add($"{verb}: top level is a {root.ValueKind}, not an object");
        Walk(verb, "$", root, problems);
    }

    private static void Walk(string verb, string at, JsonElement e, List<string> problems)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject())
                {
                    string key = p.Name, where = $"{at}.{key}";
                    if (!SnakeCase.IsMatch(key))
                        problems.Add($"{verb}: {where}: key is not snake_case");
                    if (p.Value.ValueKind is JsonValueKind.Number or JsonValueKind.String && TimeLike.IsMatch(key) && !key.EndsWith("_ns"))
                        problems.Add($"{verb}: {where}: a time whose key does not end in _ns");
                    if (DirKey.IsMatch(key) && key != "images_dir")
                        problems.Add($"{verb}: {where}: the images directory is called images_dir in every verb");
                    Walk(verb, where, p.Value, problems);
                }
                break;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in e.EnumerateArray())
                    Walk(verb, $"{at}[{i++}]", item, problems);
                break;
            case JsonValueKind.String when NetTimeSpan.IsMatch(e.GetString()!):
                problems.Add($"{verb}: {at}: a .NET time string '{e.GetString()}'");
                break;
        }
    }

    private static void CheckError(string verb, CliRunner.Result r, List<string> problems)
    {
        if (r.Code == 0)
        {
            problems.Add($"{verb}: expected a failure");
            return;
        }
        var lines = r.ErrLines;
        if (lines.Length == 0)
        {
            problems.Add($"{verb}: exit {r.Code} with nothing on stderr");
            return;
        }
        try
        {
            var err = JsonDocument.Parse(lines[^1]).RootElement.GetProperty("error");
            if (err.GetProperty("exit_code").GetInt32() != r.Code)
                problems.Add($"{verb}: error.exit_code {err.GetProperty("exit_code")} but the exit code is {r.Code}");
            if (string.IsNullOrWhiteSpace(err.GetProperty("message").GetString()))
                problems.Add($"{verb}: error.message is empty");
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            problems.Add($"{verb}: exit {r.Code}, but stderr's last line is not a JSON error object: {lines[^1]}");
        }
        if (r.Out.Length > 0)
            problems.Add($"{verb}: failed with output on stdout: {r.Out[..Math.Min(200, r.Out.Length)]}");
    }
}

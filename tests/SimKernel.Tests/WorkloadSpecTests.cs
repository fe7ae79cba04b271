using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Workloads;
using Xunit;
using static CriuSharp.SimKernel.Tests.WorkloadHarness;

namespace CriuSharp.SimKernel.Tests;

/// <summary>Bad workload files: every error names the file, the line and the field.</summary>
public class WorkloadSpecTests
{
    private static WorkloadException Bad(string json, Kernel? kernel = null)
    {
        string path = Path.Combine(Path.GetTempPath(), $"wl-bad-{Environment.ProcessId}-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, json);
        try
        {
            var k = kernel ?? NewKernel();
            int before = k.Tasks.Count();
            var e = Assert.Throws<WorkloadException>(() => WorkloadApi.Spawn(k, path));
            Assert.Equal(path, e.File);
            Assert.Equal(before, k.Tasks.Count()); // all or nothing
            Assert.StartsWith($"{path}:{e.Line}: {e.Field}: ", e.Message);
            return e;
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static string One(string mappings, string behaviour) => $$"""
        {
          "seed": 1,
          "processes": [
            {
              "name": "p",
              "mappings": [
                {{mappings}}
              ],
              "behaviour": {{behaviour}}
            }
          ]
        }
        """;

    private const string Heap = """{ "name": "heap", "size": "1MiB" }""";
    private const string Uniform = """{ "type": "uniform", "mapping": "heap" }""";

    [Fact]
    public void Malformed_json_names_the_line()
    {
        var e = Bad("{\n  \"seed\": 1,\n  \"processes\": [\n    { \"name\": \"p\" \n    \"x\": 1 }\n  ]\n}");
        Assert.Equal(5, e.Line);
        Assert.Contains("malformed JSON", e.Message);
    }

    [Fact]
    public void Trailing_garbage_and_empty_files()
    {
        Assert.Equal(1, Bad("").Line);
        Assert.Contains("malformed", Bad("{ \"seed\": 1, }").Message);
    }

    [Fact]
    public void Unknown_field_names_its_line_and_path()
    {
        var e = Bad(One("""{ "name": "heap", "size": "1MiB", "colour": "red" }""", Uniform));
        Assert.Equal(7, e.Line);
        Assert.Equal("processes[0].mappings[0].colour", e.Field);
        Assert.Contains("unknown field 'colour'", e.Message);
    }

    [Fact]
    public void Unknown_behaviour()
    {
        var e = Bad(One(Heap, """{ "type": "teleport" }"""));
        Assert.Equal(9, e.Line);
        Assert.Equal("processes[0].behaviour.type", e.Field);
        Assert.Contains("unknown behaviour 'teleport'", e.Message);
    }

    [Theory]
    [InlineData("\"12 parsecs\"", "not a size")]
    [InlineData("\"0MiB\"", "greater than zero")]
    [InlineData("-4096", "non-negative integer")]
    [InlineData("\"99999999999999999999GiB\"", "not a size")]
    [InlineData("true", "expected a size")]
    public void Bad_sizes(string size, string message)
    {
        var e = Bad(One($$"""{ "name": "heap", "size": {{size}} }""", Uniform));
        Assert.Equal(7, e.Line);
        Assert.Equal("processes[0].mappings[0].size", e.Field);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void A_mapping_too_big_for_the_machine()
    {
        var small = new Kernel(new KernelConfig { MemoryBytes = 256L << 20, SwapBytes = 64L << 20 });
        var e = Bad(One("""{ "name": "heap", "size": "1GiB" }""", Uniform), small);
        Assert.Equal("processes[0].mappings[0].size", e.Field);
        Assert.Contains("too big for the machine", e.Message);
    }

    [Fact]
    public void Overlapping_fixed_addresses()
    {
        var e = Bad(One("""
            { "name": "a", "size": "1MiB", "address": "0x7f0000000000" },
                { "name": "b", "size": "1MiB",
                  "address": "0x7f0000080000" }
            """, """{ "type": "uniform", "mapping": "a" }"""));
        Assert.Equal(9, e.Line);
        Assert.Equal("processes[0].mappings[1].address", e.Field);
        Assert.Contains("overlaps 'a'", e.Message);
    }

    [Fact]
    public void A_fixed_address_over_the_executable_is_refused()
    {
        var e = Bad(One("""{ "name": "heap", "size": "1MiB", "address": "0x555555550000" }""", Uniform));
        Assert.Equal(7, e.Line);
        Assert.Contains("overlaps a mapping the process already has", e.Message);
    }

    [Theory]
    [InlineData("""{ "name": "heap", "size": "1MiB", "address": "0x7f0000000123" }""", "not aligned")]
    [InlineData("""{ "name": "heap", "size": "1MiB", "prot": "rwz" }""", "not a protection")]
    [InlineData("""{ "name": "heap", "size": "1MiB", "huge": "giant" }""", "huge-page advice")]
    [InlineData("""{ "name": "heap", "size": "1MiB", "backing": "file" }""", "needs 'path'")]
    public void Bad_mapping_fields(string mapping, string message) =>
        Assert.Contains(message, Bad(One(mapping, Uniform)).Message);

    [Theory]
    [InlineData("""{ "type": "uniform", "mapping": "nowhere" }""", "no mapping named 'nowhere'")]
    [InlineData("""{ "type": "uniform", "pages_per_second": -1 }""", "non-negative integer")]
    [InlineData("""{ "type": "uniform", "pages_per_second": 1, "ops_per_second": 1 }""", "not both")]
    [InlineData("""{ "type": "hotcold", "distribution": "pareto" }""", "unknown distribution")]
    [InlineData("""{ "type": "hotcold", "exponent": 1.2, "hot_share": 0.5 }""", "belongs to")]
    [InlineData("""{ "type": "kvstore", "keys": 100000 }""", "keys must be between")]
    [InlineData("""{ "type": "churn", "slot_size": "3 pages" }""", "must divide")]
    [InlineData("""{ "type": "fork", "shared_mapping": "heap" }""", "must be shared")]
    [InlineData("""{ "type": "script", "ops": [ { "op": "warp" } ] }""", "unknown operation 'warp'")]
    [InlineData("""{ "type": "script", "ops": [ { "op": "write", "region": "heap", "bytes": "x", "hex": "00" } ] }""", "exactly one of")]
    [InlineData("""{ "type": "script", "ops": [ { "op": "expect_pagemap", "region": "heap" } ] }""", "at least one of")]
    [InlineData("""{ "type": "script", "ops": [ { "op": "munmap", "region": "elsewhere" } ] }""", "no mapping named 'elsewhere'")]
    public void Bad_behaviour_fields(string behaviour, string message)
    {
        var e = Bad(One(Heap, behaviour));
        Assert.Contains(message, e.Message);
        Assert.StartsWith("processes[0].behaviour", e.Field);
    }

    [Fact]
    public void Hugetlb_mappings_need_whole_huge_pages_a_fitting_behaviour_and_a_pool()
    {
        const string odd = """{ "name": "h", "size": "3MiB", "huge": "hugetlb" }""";
        Assert.Contains("whole number of 2 MiB huge pages", Bad(One(odd, """{ "type": "uniform" }""")).Message);
        const string two = """{ "name": "h", "size": "4MiB", "huge": "hugetlb" }""";
        Assert.Contains("cannot work on a hugetlb mapping", Bad(One(two, """{ "type": "swap" }""")).Message);
        // A machine without a pool: the mapping's ENOMEM names the pool.
        var k = NewKernel();
        var spec = WorkloadSpec.Parse(k, "h.json", System.Text.Encoding.UTF8.GetBytes(One(two, """{ "type": "uniform" }""")));
        var e = Assert.Throws<WorkloadException>(() => WorkloadApi.Spawn(k, spec));
        Assert.Contains("hugetlb pool cannot hold 4 MiB", e.Message);
        k.Hugetlb.Write("/proc/sys/vm/nr_hugepages", "2").OrThrow("pool");
        var t = WorkloadApi.Spawn(k, spec)[0];
        Assert.Contains(" ht ", k.Proc.Smaps(t.Pid).Split('\n').First(l => l.StartsWith("VmFlags:", StringComparison.Ordinal) && l.Contains(" ht", StringComparison.Ordinal)) + " ");
    }

    [Fact]
    public void Missing_file()
    {
        var e = Assert.Throws<WorkloadException>(() => WorkloadApi.Spawn(NewKernel(), "/nonexistent/w.json"));
        Assert.Equal("/nonexistent/w.json", e.File);
    }

    [Fact]
    public void Every_sample_has_a_one_sentence_description()
    {
        // samples/traces holds recordings, not workloads; a workload that replays one (or takes its
        // page contents from one) needs the trace reader of src/Traces, which these tests do not
        // load, so its description is read from the file (Traces.Tests and the CLI tests run it).
        string traces = Path.Combine(SamplesDir, "traces") + Path.DirectorySeparatorChar;
        foreach (var f in Directory.GetFiles(SamplesDir, "*.json", SearchOption.AllDirectories).Where(f => !f.StartsWith(traces, StringComparison.Ordinal)))
        {
            string text = File.ReadAllText(f);
            string? description = text.Contains("\"trace", StringComparison.Ordinal)
                ? System.Text.Json.JsonDocument.Parse(text).RootElement.GetProperty("description").GetString()
                : WorkloadSpec.Load(NewKernel(), f).Description;
            Assert.False(string.IsNullOrWhiteSpace(description), f);
            Assert.EndsWith(".", description!.TrimEnd());
        }
    }

    [Fact]
    public void Extra_state_round_trips_and_is_versioned()
    {
        var k = NewKernel();
        var t = WorkloadApi.Spawn(k, Sample("churn.json"))[0];
        Assert.Equal("WKL1"u8.ToArray(), t.ExtraState[..4]);
        var copy = ProgramImage.Decode(t.ExtraState.ToArray());
        Assert.Equal(Behaviour.Churn, copy.Kind);
        Assert.Equal(WorkloadApi.Program(t).Describe(), copy.Describe());
        var bad = t.ExtraState.ToArray();
        bad[3] = (byte)'9';
        Assert.Throws<InvalidDataException>(() => ProgramImage.Decode(bad));
    }
}

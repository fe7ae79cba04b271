using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Traces;

/// <summary>
/// A trace on disk: a chain of CRIU pre-dump directories plus an index.
/// <code>
///   TRACE/trace.json        the index: times, per-sample figures, VMAs and their changes (written last)
///   TRACE/0/                pre-dump of every page (inventory, pagemap-PID.img, pages-N.img, stats-dump)
///   TRACE/1/parent -> ../0  pre-dump of the pages written since sample 0 (PE_PARENT for the others)
///   TRACE/2/parent -> ../1  ...
/// </code>
/// crit reads every directory as it reads CRIU's own pre-dumps. A pre-dump holds no mm image, so
/// the VMAs live in the index: the full list at sample 0, then per sample the changes (ranges
/// unmapped, mapped, re-protected) as seen in /proc/PID/maps just before that sample's freeze.
/// </summary>
public sealed class TraceIndex
{
    public const string FileName = "trace.json";
    public const string FormatName = "criu-sharp-trace";
    public const int CurrentVersion = 1;

    public string Format { get; set; } = FormatName;
    public int Version { get; set; } = CurrentVersion;
    /// <summary>"/proc" for the real host, else the simulated machine's directory.</summary>
    public string Machine { get; set; } = "";
    public string Arch { get; set; } = "";
    public string Kernel { get; set; } = "";
    public int Pid { get; set; }
    public string Comm { get; set; } = "";
    public ulong IntervalNs { get; set; }
    public int PageSize { get; set; } = PageGeometry.PageSize;
    public string Tracker { get; set; } = "";
    public string Compression { get; set; } = "";
    /// <summary>The recording stopped before its planned length (the process exited).</summary>
    public bool EndedEarly { get; set; }
    public string? EndReason { get; set; }
    public List<TraceSample> Samples { get; set; } = [];

    internal static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        WriteIndented = true,
    };

    public void Save(string traceDir) =>
        AtomicFile.Write(Path.Combine(traceDir, FileName), JsonSerializer.SerializeToUtf8Bytes(this, Json));

    /// <summary>Reads and checks the index; every problem is an <see cref="ImageFormatException"/> naming trace.json.</summary>
    public static TraceIndex Load(string traceDir)
    {
        string file = Path.Combine(traceDir, FileName);
        if (!Directory.Exists(traceDir))
            throw new ImageFormatException(traceDir, "trace", null, "does not exist");
        if (!File.Exists(file))
            throw new ImageFormatException(file, "trace index", null,
                "missing: not a trace, or its recording never finished (the index is written last)");
        TraceIndex? index;
        try
        {
            index = JsonSerializer.Deserialize<TraceIndex>(File.ReadAllBytes(file), Json);
        }
        catch (JsonException e)
        {
            throw new ImageFormatException(file, "trace index", null, $"not valid JSON ({CliFirstLine(e.Message)})");
        }
        if (index is null)
            throw new ImageFormatException(file, "trace index", null, "empty");
        index.Check(file);
        return index;
    }

    private static string CliFirstLine(string s) => s.Split('\n')[0].TrimEnd();

    private void Check(string file)
    {
        ImageFormatException Bad(string problem) => new(file, "trace index", null, problem);
        if (Format != FormatName)
            throw Bad($"format '{Format}' is not {FormatName}");
        if (Version != CurrentVersion)
            throw Bad($"version {Version} is not supported (expected {CurrentVersion})");
        if (PageSize != PageGeometry.PageSize)
            throw Bad($"page size {PageSize} (CRIU images hold 4096-byte pages)");
        if (Samples.Count == 0)
            throw Bad("no samples");
        ulong last = 0;
        for (int i = 0; i < Samples.Count; i++)
        {
            var s = Samples[i];
            if (s.Dir != i.ToString(CultureInfo.InvariantCulture))
                throw Bad($"samples[{i}].dir is '{s.Dir}', expected '{i}'");
            if (i > 0 && s.TimeNs < last)
                throw Bad($"samples[{i}].time_ns goes back in time");
            last = s.TimeNs;
            if (s.Processes.Count == 0)
                throw Bad($"samples[{i}] has no processes");
            foreach (var p in s.Processes)
            {
                if (i == 0 && p.Vmas is null)
                    throw Bad($"samples[0] process {p.Pid} lists no vmas");
                foreach (var v in (p.Vmas ?? []).Concat(p.VmaChanges ?? []))
                    v.Parse(file, i);
            }
        }
        if (Samples[0].TimeNs != 0)
            throw Bad("samples[0].time_ns is not 0");
    }
}

/// <summary>One sample: a pre-dump directory and what the recorder saw.</summary>
public sealed class TraceSample
{
    /// <summary>The pre-dump's directory, relative to the trace ("0", "1", ...).</summary>
    public string Dir { get; set; } = "";
    /// <summary>Time of the freeze since the first sample's.</summary>
    public ulong TimeNs { get; set; }
    /// <summary>How long the tree was frozen for this sample (the pre-dump's frozen_time).</summary>
    public ulong FrozenUs { get; set; }
    public ulong PagesWritten { get; set; }
    public ulong PagesSkippedParent { get; set; }
    public ulong BytesRaw { get; set; }
    public ulong BytesStored { get; set; }
    public List<TraceProcess> Processes { get; set; } = [];
}

/// <summary>A process of the tree at one sample: all its VMAs (sample 0, or a process new in this sample), else the changes.</summary>
public sealed class TraceProcess
{
    public int Pid { get; set; }
    public List<TraceVmaRecord>? Vmas { get; set; }
    public List<TraceVmaRecord>? VmaChanges { get; set; }
}

/// <summary>
/// A VMA or a change of one: <c>op</c> is absent in a full list; "map" (a range appeared, with
/// its protection and name), "unmap" (a range went away) or "protect" (a range changed
/// protection) in a list of changes. Addresses are hexadecimal strings as in /proc/PID/maps.
/// </summary>
public sealed class TraceVmaRecord
{
    public string? Op { get; set; }
    public string Start { get; set; } = "";
    public string End { get; set; } = "";
    /// <summary>Permissions as /proc/PID/maps prints them ("rw-p").</summary>
    public string? Prot { get; set; }
    public string? Name { get; set; }

    public static TraceVmaRecord From(TraceVma v, string? op) =>
        new() { Op = op, Start = $"0x{v.Start:x}", End = $"0x{v.End:x}", Prot = op == "unmap" ? null : ProtText(v.Prot), Name = op is null or "map" && v.Name.Length > 0 ? v.Name : null };

    public TraceVma Parse(string file, int sample)
    {
        ImageFormatException Bad(string problem) => new(file, "trace index", null, $"samples[{sample}]: {problem}");
        if (Op is not (null or "map" or "unmap" or "protect"))
            throw Bad($"unknown VMA change '{Op}'");
        ulong start = Hex(Start) ?? throw Bad($"'{Start}' is not an address");
        ulong end = Hex(End) ?? throw Bad($"'{End}' is not an address");
        if (end <= start || (start | end) % PageGeometry.PageSize != 0)
            throw Bad($"{Start}-{End} is not a page-aligned range");
        Prot prot = Op == "unmap" ? KernelApi.Prot.None
            : ParseProt(Prot) ?? throw Bad($"'{Prot}' is not a protection like rw-p");
        return new TraceVma(start, end, prot, Name ?? "");
    }

    private static ulong? Hex(string s)
    {
        var t = s.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? s[2..] : s;
        return ulong.TryParse(t, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out ulong v) ? v : null;
    }

    public static string ProtText(Prot p) =>
        $"{((p & KernelApi.Prot.Read) != 0 ? 'r' : '-')}{((p & KernelApi.Prot.Write) != 0 ? 'w' : '-')}{((p & KernelApi.Prot.Exec) != 0 ? 'x' : '-')}p";

    public static Prot? ParseProt(string? s)
    {
        if (s is null || s.Length < 3)
            return null;
        Prot p = 0;
        if (s[0] == 'r') p |= KernelApi.Prot.Read; else if (s[0] != '-') return null;
        if (s[1] == 'w') p |= KernelApi.Prot.Write; else if (s[1] != '-') return null;
        if (s[2] == 'x') p |= KernelApi.Prot.Exec; else if (s[2] != '-') return null;
        return p;
    }
}

/// <summary>VMA lists as sorted, non-overlapping ranges: the diff the recorder writes and the patch the reader applies.</summary>
public static class VmaDiff
{
    /// <summary>Parses /proc/PID/maps text (the same on the real host and the simulator).</summary>
    public static List<TraceVma> ParseMaps(string maps)
    {
        var list = new List<TraceVma>();
        foreach (var raw in maps.Split('\n'))
        {
            var line = raw.TrimEnd();
            if (line.Length == 0)
                continue;
            var parts = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
            var range = parts[0].Split('-');
            ulong start = ulong.Parse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            ulong end = ulong.Parse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            var prot = TraceVmaRecord.ParseProt(parts[1]) ?? Prot.None;
            list.Add(new TraceVma(start, end, prot, parts.Length > 5 ? parts[5].Trim() : ""));
        }
        list.Sort((a, b) => a.Start.CompareTo(b.Start));
        return list;
    }

    /// <summary>The changes that turn <paramref name="before"/> into <paramref name="after"/>: unmaps, then maps, then protection changes.</summary>
    public static List<TraceVmaRecord> Changes(IReadOnlyList<TraceVma> before, IReadOnlyList<TraceVma> after)
    {
        var result = new List<TraceVmaRecord>();
        foreach (var (s, e) in Minus(before, after))
            result.Add(TraceVmaRecord.From(new TraceVma(s, e, Prot.None, ""), "unmap"));
        foreach (var v in after)
            foreach (var (s, e) in Minus([v], before))
                result.Add(TraceVmaRecord.From(v with { Start = s, End = e }, "map"));
        foreach (var a in after)
            foreach (var b in before)
            {
                ulong s = Math.Max(a.Start, b.Start), e = Math.Min(a.End, b.End);
                if (s < e && a.Prot != b.Prot)
                    result.Add(TraceVmaRecord.From(a with { Start = s, End = e }, "protect"));
            }
        return result;
    }

    /// <summary>Applies changes (as <see cref="Changes"/> writes them) to a VMA list.</summary>
    public static List<TraceVma> Apply(IReadOnlyList<TraceVma> vmas, IEnumerable<TraceVma> unmaps, IEnumerable<TraceVma> maps, IEnumerable<TraceVma> protects)
    {
        var list = new List<TraceVma>(vmas);
        foreach (var u in unmaps)
            list = Remove(list, u.Start, u.End);
        foreach (var m in maps)
        {
            list = Remove(list, m.Start, m.End);
            list.Add(m);
        }
        foreach (var p in protects)
        {
            var inside = list.Where(v => v.Start < p.End && p.Start < v.End).ToList();
            list = Remove(list, p.Start, p.End);
            foreach (var v in inside)
                list.Add(v with { Start = Math.Max(v.Start, p.Start), End = Math.Min(v.End, p.End), Prot = p.Prot });
        }
        list.Sort((a, b) => a.Start.CompareTo(b.Start));
        return list;
    }

    private static List<TraceVma> Remove(List<TraceVma> list, ulong start, ulong end)
    {
        var result = new List<TraceVma>(list.Count + 1);
        foreach (var v in list)
        {
            if (v.End <= start || end <= v.Start)
            {
                result.Add(v);
                continue;
            }
            if (v.Start < start)
                result.Add(v with { End = start });
            if (end < v.End)
                result.Add(v with { Start = end });
        }
        return result;
    }

    /// <summary>Ranges covered by <paramref name="a"/> and not by <paramref name="b"/>.</summary>
    public static List<(ulong Start, ulong End)> Minus(IReadOnlyList<TraceVma> a, IReadOnlyList<TraceVma> b)
    {
        var result = new List<(ulong, ulong)>();
        foreach (var v in a)
        {
            var pieces = new List<(ulong S, ulong E)> { (v.Start, v.End) };
            foreach (var w in b)
            {
                if (w.End <= v.Start || v.End <= w.Start)
                    continue;
                var next = new List<(ulong, ulong)>();
                foreach (var (s, e) in pieces)
                {
                    if (w.End <= s || e <= w.Start)
                    {
                        next.Add((s, e));
                        continue;
                    }
                    if (s < w.Start)
                        next.Add((s, w.Start));
                    if (w.End < e)
                        next.Add((w.End, e));
                }
                pieces = next;
            }
            result.AddRange(pieces);
        }
        return result;
    }
}

using System.Globalization;
using System.Text;
using System.Text.Json;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;

namespace CriuSharp.SimKernel.Workloads;

/// <summary>A parsed, validated workload file: what <see cref="WorkloadApi.Spawn"/> creates.</summary>
public sealed class WorkloadSpec
{
    public string File { get; init; } = "";
    public string? Description { get; init; }
    public ulong Seed { get; init; }
    public List<ProcessSpec> Processes { get; } = [];

    /// <summary>Reads and validates a workload file for a machine with <paramref name="kernel"/>'s geometry and memory.</summary>
    public static WorkloadSpec Load(Kernel kernel, string path)
    {
        byte[] bytes;
        try
        {
            bytes = System.IO.File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new WorkloadException(path, 0, "(file)", e.Message);
        }
        return Parse(kernel, path, bytes);
    }

    public static WorkloadSpec Parse(Kernel kernel, string file, byte[] utf8) =>
        new SpecReader(kernel, file).Read(JsonNode.Parse(file, utf8));

    /// <summary>
    /// Huge pages of <paramref name="hugePageSize"/> that the MAP_HUGETLB mappings (<c>"huge": "hugetlb"</c>)
    /// of every process take from the pool, those a script maps later included.
    /// </summary>
    public long HugetlbPages(ulong hugePageSize) =>
        Processes.Sum(p => p.Program.Regions.Where(r => r.Huge == 3).Sum(r => (long)((r.Size + hugePageSize - 1) / hugePageSize)));
}

/// <summary>One process of a workload file and the program it runs.</summary>
public sealed class ProcessSpec
{
    public string Name { get; init; } = "";
    public int Line { get; init; }
    public ProgramImage Program { get; init; } = new();
}

/// <summary>
/// Validates the JSON tree field by field. Every error names the line of the offending property
/// and its path; unknown fields are errors (a typo must not silently fall back to a default).
/// </summary>
internal sealed class SpecReader(Kernel kernel, string file)
{
    private readonly ulong _ps = (ulong)kernel.Arch.PageSize;
    private ulong _workloadBytes;

    private WorkloadException Fail(JsonNode n, string message) => new(file, n.Line, n.Path.Length == 0 ? "(root)" : n.Path, message);

    private static readonly string[] TopFields = ["description", "seed", "processes", "comment"];
    private static readonly string[] ProcessFields = ["name", "mappings", "behaviour", "comment"];
    private static readonly string[] MappingFields = ["name", "size", "prot", "backing", "path", "shared", "huge", "address", "populate", "comment"];
    private static readonly string[] CommonBehaviourFields = ["type", "mapping", "pages_per_second", "ops_per_second", "prefill", "content", "comment"];

    private static readonly Dictionary<string, (Behaviour Kind, string[] Fields)> Behaviours = new()
    {
        ["uniform"] = (Behaviour.Uniform, []),
        ["hotcold"] = (Behaviour.HotCold, ["distribution", "exponent", "hot_fraction", "hot_share"]),
        ["sequential"] = (Behaviour.Sequential, ["stride_pages"]),
        ["kvstore"] = (Behaviour.KvStore, ["keys", "read_share", "delete_share"]),
        ["churn"] = (Behaviour.Churn, ["slot_size", "weights"]),
        ["fork"] = (Behaviour.Fork, ["children", "shared_mapping", "shared_share"]),
        ["swap"] = (Behaviour.Swap, ["pageout_every", "pageout_pages", "read_share"]),
        ["thp"] = (Behaviour.Thp, ["split_every"]),
        ["idle"] = (Behaviour.Idle, []),
        ["script"] = (Behaviour.Script, ["ops"]),
        ["trace"] = (Behaviour.Trace, ["path", "speed", "loop", "pid"]),
        ["threads"] = (Behaviour.Threads, ["threads"]),
    };

    public WorkloadSpec Read(JsonNode root)
    {
        Expect(root, JsonValueKind.Object, "a JSON object");
        CheckFields(root, TopFields);
        ulong seed = root.Get("seed") is { } s ? UInt(s, ulong.MaxValue) : 1;
        var procs = root.Get("processes") ?? throw Fail(root, "missing field 'processes'");
        Expect(procs, JsonValueKind.Array, "an array of processes");
        if (procs.Items.Count == 0)
            throw Fail(procs, "at least one process is needed");
        var spec = new WorkloadSpec
        {
            File = file,
            Description = root.Get("description") is { } d ? Str(d) : null,
            Seed = seed,
        };
        for (int i = 0; i < procs.Items.Count; i++)
            spec.Processes.Add(ReadProcess(procs.Items[i], seed, i));
        return spec;
    }

    private ProcessSpec ReadProcess(JsonNode p, ulong seed, int index)
    {
        Expect(p, JsonValueKind.Object, "a process object");
        CheckFields(p, ProcessFields);
        string name = p.Get("name") is { } n ? Str(n) : $"wl{index}";
        if (name.Length == 0 || name.Length > 15 || name.Contains('/'))
            throw Fail(p.Get("name")!, "a process name has 1 to 15 characters and no '/'");
        var prog = new ProgramImage { File = file, Process = name, Seed = seed ^ Rng.Mix((ulong)index + 0x51ed) };
        if (p.Get("mappings") is { } maps)
        {
            Expect(maps, JsonValueKind.Array, "an array of mappings");
            foreach (var m in maps.Items)
                AddRegion(prog, ReadMapping(m), m);
        }
        var b = p.Get("behaviour") ?? throw Fail(p, "missing field 'behaviour'");
        ReadBehaviour(prog, b);
        CheckFixedOverlaps(prog, p);
        return new ProcessSpec { Name = name, Line = p.Line, Program = prog };
    }

    private void AddRegion(ProgramImage prog, RegionImage r, JsonNode at)
    {
        if (prog.Regions.Any(x => x.Name == r.Name))
            throw Fail(at.Get("name") ?? at, $"a mapping named '{r.Name}' already exists in this process");
        if (prog.Regions.Count >= Regs.MaxRegions)
            throw Fail(at, $"a process has at most {Regs.MaxRegions} mappings (including the ledger the workload adds)");
        if (!r.Deferred)
        {
            // Physical memory plus swap is all the machine can ever hold; a workload asking for
            // more cannot run to completion, so it is refused up front.
            _workloadBytes += r.Size;
            ulong limit = (ulong)kernel.Config.MemoryBytes + (ulong)kernel.Config.SwapBytes;
            if (r.Size > (ulong)kernel.Config.MemoryBytes || _workloadBytes > limit)
                throw Fail(at.Get("size") ?? at,
                    $"too big for the machine: {Units.Format(_workloadBytes)} mapped in total, the machine has {Units.Format((ulong)kernel.Config.MemoryBytes)} of memory and {Units.Format((ulong)kernel.Config.SwapBytes)} of swap");
        }
        prog.Regions.Add(r);
    }

    private RegionImage ReadMapping(JsonNode m)
    {
        Expect(m, JsonValueKind.Object, "a mapping object");
        CheckFields(m, MappingFields);
        var nameNode = m.Get("name") ?? throw Fail(m, "missing field 'name'");
        var r = new RegionImage { Name = Str(nameNode), Line = m.Line };
        if (r.Name.Length == 0)
            throw Fail(nameNode, "empty mapping name");
        var sizeNode = m.Get("size") ?? throw Fail(m, "missing field 'size'");
        r.Size = MappingSize(sizeNode);
        r.Prot = m.Get("prot") is { } pr ? ProtOf(pr) : (int)(Prot.Read | Prot.Write);
        r.Shared = m.Get("shared") is { } sh && BoolOf(sh);
        r.Populate = m.Get("populate") is { } po && BoolOf(po);
        string backing = m.Get("backing") is { } bk ? Str(bk) : "anonymous";
        if (backing == "file")
        {
            var pathNode = m.Get("path") ?? throw Fail(m, "a file-backed mapping needs 'path'");
            r.Path = Str(pathNode);
            if (!r.Path.StartsWith('/') || r.Path.StartsWith("/usr/bin/", StringComparison.Ordinal) || r.Path.StartsWith("/proc/", StringComparison.Ordinal))
                throw Fail(pathNode, "an absolute path outside /usr/bin and /proc is needed");
        }
        else if (backing != "anonymous")
            throw Fail(m.Get("backing")!, $"unknown backing '{backing}' (expected anonymous or file)");
        else if (m.Get("path") is { } stray)
            throw Fail(stray, "'path' is only valid with \"backing\": \"file\"");
        if (m.Get("huge") is { } hg)
        {
            r.Huge = Str(hg) switch
            {
                "default" => 0,
                "hugepage" => 1,
                "nohugepage" => 2,
                "hugetlb" => 3,
                var other => throw Fail(hg, $"unknown huge-page advice '{other}' (expected default, hugepage, nohugepage or hugetlb)"),
            };
            if (r.Huge == 3)
            {
                // MAP_HUGETLB: anonymous memory from the machine's hugetlb pool, in whole huge pages.
                if (r.Path is not null)
                    throw Fail(hg, "hugetlb mappings are anonymous here (no 'path')");
                ulong hsz = kernel.Arch.HugePageSize;
                if (r.Size % hsz != 0)
                    throw Fail(m.Get("size") ?? hg, $"a hugetlb mapping is a whole number of {hsz >> 20} MiB huge pages");
            }
        }
        if (m.Get("address") is { } ad)
        {
            r.Address = AddressOf(ad);
            if (r.Address + r.Size > kernel.Arch.TaskSize || r.Address + r.Size < r.Address)
                throw Fail(ad, $"the mapping would end above the user address space (0x{kernel.Arch.TaskSize:x})");
        }
        return r;
    }

    private void CheckFixedOverlaps(ProgramImage prog, JsonNode p)
    {
        var maps = p.Get("mappings");
        for (int i = 0; i < prog.Regions.Count; i++)
        {
            var a = prog.Regions[i];
            if (a.Address == 0 || a.Deferred)
                continue;
            ulong aEnd = a.Address + Span(prog, i);
            for (int j = 0; j < i; j++)
            {
                var b = prog.Regions[j];
                if (b.Address == 0 || b.Deferred)
                    continue;
                ulong bEnd = b.Address + Span(prog, j);
                if (a.Address < bEnd && b.Address < aEnd)
                {
                    var node = maps?.Items.FirstOrDefault(x => x.Get("name")?.String == a.Name);
                    throw Fail(node?.Get("address") ?? p, $"mapping '{a.Name}' at 0x{a.Address:x}-0x{aEnd:x} overlaps '{b.Name}' at 0x{b.Address:x}-0x{bEnd:x}");
                }
            }
        }
    }

    /// <summary>Address space a region occupies: churn reserves twice its size (every slot has a place to move to).</summary>
    private static ulong Span(ProgramImage prog, int region) =>
        prog.Kind == Behaviour.Churn && region == prog.Data ? 2 * prog.Regions[region].Size : prog.Regions[region].Size;

    // ---- behaviours ----------------------------------------------------------------------

    private void ReadBehaviour(ProgramImage prog, JsonNode b)
    {
        Expect(b, JsonValueKind.Object, "a behaviour object");
        var typeNode = b.Get("type") ?? throw Fail(b, "missing field 'type'");
        string type = Str(typeNode);
        if (!Behaviours.TryGetValue(type, out var def))
            throw Fail(typeNode, $"unknown behaviour '{type}' (expected {string.Join(", ", Behaviours.Keys)})");
        CheckFields(b, [.. CommonBehaviourFields, .. def.Fields]);
        prog.Kind = def.Kind;
        var pps = b.Get("pages_per_second");
        var ops = b.Get("ops_per_second");
        if (pps is not null && ops is not null)
            throw Fail(ops, "give either pages_per_second or ops_per_second, not both");
        prog.Rate = (pps ?? ops) is { } rate ? UInt(rate, 1_000_000_000_000UL) : def.Kind is Behaviour.Idle or Behaviour.Script ? 0UL : 10_000UL;
        prog.Prefill = b.Get("prefill") is { } pf ? BoolOf(pf) : def.Kind is Behaviour.Idle or Behaviour.Fork;

        if (def.Kind == Behaviour.Script)
        {
            if (b.Get("mapping") is { } stray)
                throw Fail(stray, "a script names its mappings in each operation");
            var opsNode = b.Get("ops") ?? throw Fail(b, "missing field 'ops'");
            ReadScript(prog, opsNode);
            return;
        }

        if (def.Kind == Behaviour.Trace)
        {
            ReadTrace(prog, b);
            return;
        }

        if (prog.Regions.Count == 0)
            throw Fail(b, $"behaviour '{type}' needs a mapping to work on");
        var mapNode = b.Get("mapping");
        prog.Data = mapNode is null ? 0 : RegionIndex(prog, mapNode);
        var data = prog.Regions[prog.Data];
        var at = mapNode ?? b;
        // hugetlb pages cannot be paged out, split, zapped in part or remapped (mm/hugetlb.c), and a
        // forked child's copy-on-write needs pool pages the parent reserved for itself.
        if (data.Huge == 3 && def.Kind is not (Behaviour.Uniform or Behaviour.HotCold or Behaviour.Sequential or Behaviour.Idle or Behaviour.Threads))
            throw Fail(at, $"behaviour '{type}' cannot work on a hugetlb mapping (uniform, hotcold, sequential, idle and threads can)");
        ulong pages = data.Size / _ps;
        bool writable = (data.Prot & (int)Prot.Write) != 0;
        if (!writable && def.Kind != Behaviour.Idle)
            throw Fail(at, $"behaviour '{type}' writes to mapping '{data.Name}', which is not writable");

        switch (def.Kind)
        {
            case Behaviour.HotCold:
            {
                string dist = b.Get("distribution") is { } dn ? Str(dn) : "zipf";
                if (dist == "zipf")
                {
                    prog.Zipf = true;
                    prog.Exponent = b.Get("exponent") is { } ex ? Dbl(ex, 0.01, 10) : 1.0;
                    foreach (var f in new[] { "hot_fraction", "hot_share" })
                        if (b.Get(f) is { } x)
                            throw Fail(x, $"'{f}' belongs to \"distribution\": \"hot\"");
                }
                else if (dist == "hot")
                {
                    if (b.Get("exponent") is { } x)
                        throw Fail(x, "'exponent' belongs to \"distribution\": \"zipf\"");
                    double frac = b.Get("hot_fraction") is { } hf ? Dbl(hf, 0, 1) : 0.1;
                    prog.HotPages = Math.Clamp((ulong)Math.Round(frac * pages), 1UL, pages);
                    prog.HotShare = Share(b.Get("hot_share"), 0.9);
                }
                else
                    throw Fail(b.Get("distribution")!, $"unknown distribution '{dist}' (expected zipf or hot)");
                break;
            }
            case Behaviour.Sequential:
                prog.Stride = b.Get("stride_pages") is { } st ? UInt(st, pages) : 1;
                if (prog.Stride == 0)
                    throw Fail(b.Get("stride_pages")!, "the stride must be at least 1 page");
                break;
            case Behaviour.KvStore:
            {
                if (pages < 2)
                    throw Fail(at, "a kvstore table needs at least 2 pages (header and slots)");
                ulong capacity = KvStore.Capacity(data.Size, _ps);
                prog.Keys = b.Get("keys") is { } k ? UInt(k, ulong.MaxValue) : capacity / 2;
                if (prog.Keys == 0 || prog.Keys > capacity * 3 / 4)
                    throw Fail(b.Get("keys") ?? at, $"keys must be between 1 and {capacity * 3 / 4} (three quarters of the {capacity} slots the mapping holds)");
                prog.ReadShare = Share(b.Get("read_share"), 0.3);
                prog.DeleteShare = Share(b.Get("delete_share"), 0.2);
                break;
            }
            case Behaviour.Churn:
            {
                if (data.Path is not null || data.Shared)
                    throw Fail(at, "churn works on private anonymous memory");
                var slotNode = b.Get("slot_size");
                ulong slot = slotNode is null ? Math.Min(16 * _ps, data.Size) : MappingSize(slotNode);
                if (data.Size % slot != 0)
                    throw Fail(slotNode ?? at, $"the slot size ({Units.Format(slot)}) must divide the mapping size ({Units.Format(data.Size)})");
                if (data.Size / slot > 65536)
                    throw Fail(slotNode ?? at, "at most 65536 slots");
                prog.SlotPages = slot / _ps;
                prog.Weights = [85, 4, 4, 4, 3];
                if (b.Get("weights") is { } w)
                {
                    Expect(w, JsonValueKind.Object, "an object of weights");
                    CheckFields(w, Churn.WeightNames);
                    for (int i = 0; i < Churn.WeightNames.Length; i++)
                        if (w.Get(Churn.WeightNames[i]) is { } wi)
                            prog.Weights[i] = (int)UInt(wi, 1_000_000);
                    if (prog.Weights.Sum() == 0)
                        throw Fail(w, "at least one weight must be non-zero");
                }
                break;
            }
            case Behaviour.Fork:
            {
                prog.Children = b.Get("children") is { } c ? (int)UInt(c, 16) : 2;
                if (prog.Children == 0)
                    throw Fail(b.Get("children")!, "at least one child");
                if (b.Get("shared_mapping") is { } sm)
                {
                    prog.SharedData = RegionIndex(prog, sm);
                    var s = prog.Regions[prog.SharedData];
                    if (!s.Shared || s.Path is not null || (s.Prot & (int)Prot.Write) == 0)
                        throw Fail(sm, $"mapping '{s.Name}' must be shared, anonymous and writable");
                    if (prog.SharedData == prog.Data)
                        throw Fail(sm, "the shared mapping must differ from the private one");
                    if (s.Size / _ps < (ulong)prog.Children + 1)
                        throw Fail(sm, "the shared mapping needs a page per process at least");
                }
                prog.SharedShare = Share(b.Get("shared_share"), prog.SharedData >= 0 ? 0.25 : 0);
                if (data.Shared)
                    throw Fail(at, "the forked data mapping must be private (copy-on-write)");
                break;
            }
            case Behaviour.Threads:
            {
                // Threads share the address space; each stamps its own slice, so a write lost by
                // a dump shows as a bad page in the slice of the thread that made it.
                var tn = b.Get("threads");
                prog.Threads = tn is not null ? (int)UInt(tn, 15) : 3;
                if (prog.Threads == 0)
                    throw Fail(tn!, "at least one thread besides the leader");
                if (pages < (ulong)prog.Threads + 1)
                    throw Fail(at, $"mapping '{data.Name}' needs a page per thread at least ({prog.Threads + 1} pages)");
                if (data.Path is not null)
                    throw Fail(at, "the threads behaviour works on anonymous memory");
                break;
            }
            case Behaviour.Swap:
                if (data.Path is not null || data.Shared)
                    throw Fail(at, "swap works on private anonymous memory");
                prog.PageoutEvery = b.Get("pageout_every") is { } pe ? UInt(pe, ulong.MaxValue) : 1000;
                prog.PageoutPages = b.Get("pageout_pages") is { } pp ? UInt(pp, pages) : Math.Min(64UL, pages);
                if (prog.PageoutEvery == 0 || prog.PageoutPages == 0)
                    throw Fail(b.Get("pageout_every") ?? b.Get("pageout_pages") ?? b, "must be at least 1");
                prog.ReadShare = Share(b.Get("read_share"), 0.2);
                break;
            case Behaviour.Thp:
                if (data.Path is not null || data.Shared)
                    throw Fail(at, "transparent huge pages need private anonymous memory");
                if (data.Huge == 2)
                    throw Fail(at, "the thp behaviour needs huge-page advice other than nohugepage");
                data.Huge = 1;
                prog.SplitEvery = b.Get("split_every") is { } se ? UInt(se, ulong.MaxValue) : 5000;
                break;
        }

        if (b.Get("content") is { } contentNode)
            prog.Content = ReadContent(contentNode, prog);

        if (Stamped.Uses(prog.Kind))
        {
            // The ledger: one word per data page (and per shared page for fork), kept in the
            // process's own private memory so that fork copies it and a dump saves it.
            ulong entries = pages + (prog.SharedData >= 0 ? prog.Regions[prog.SharedData].Size / _ps : 0);
            AddLedger(prog, data.Name + ".ledger", entries * 8, b);
        }
        else if (prog.Kind == Behaviour.Churn)
        {
            ulong slots = data.Size / (prog.SlotPages * _ps);
            AddLedger(prog, data.Name + ".control", pages * 8 + slots * 8, b);
        }
    }

    /// <summary>"stamped" (null: the default), "zero-fill:N%" or "trace:PATH" (made absolute, relative to the workload file).</summary>
    private string? ReadContent(JsonNode n, ProgramImage prog)
    {
        if (!Stamped.Uses(prog.Kind))
            throw Fail(n, "only the stamped behaviours (uniform, hotcold, sequential, swap, thp, idle, fork, threads) take 'content'");
        string text = Str(n);
        if (text == "stamped")
            return null;
        if (text.StartsWith("zero-fill:", StringComparison.Ordinal))
        {
            var pct = text["zero-fill:".Length..].TrimEnd('%');
            if (!int.TryParse(pct, NumberStyles.None, CultureInfo.InvariantCulture, out int v) || v > 100)
                throw Fail(n, $"'{text}': the zero share is a whole percentage from 0 to 100, as in zero-fill:60%");
            return $"zero-fill:{v}";
        }
        if (text.StartsWith("trace:", StringComparison.Ordinal) && text.Length > "trace:".Length)
        {
            string baseDir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(file)) ?? ".";
            string path = System.IO.Path.GetFullPath(System.IO.Path.Combine(baseDir, text["trace:".Length..]));
            if (!System.IO.Directory.Exists(path))
                throw Fail(n, $"no trace directory {path} (record one with 'criu-sharp record')");
            if (!TraceLibrary.Registered)
                throw Fail(n, "this program cannot read traces");
            _ = TraceLibrary.Get(path).ContentPages; // refuses a damaged or empty trace now, not mid-run
            return "trace:" + path;
        }
        throw Fail(n, $"'{text}' is not a content kind (expected stamped, zero-fill:N% or trace:TRACE)");
    }

    /// <summary>A replayed recording: the process brings its own VMAs, so it declares no mappings.</summary>
    private void ReadTrace(ProgramImage prog, JsonNode b)
    {
        if (b.Get("mapping") is { } stray)
            throw Fail(stray, "a trace replays the recorded process's own mappings");
        if (prog.Regions.Count > 0)
            throw Fail(b, "a trace replays the recorded process's own mappings; remove 'mappings'");
        if ((b.Get("pages_per_second") ?? b.Get("ops_per_second") ?? b.Get("prefill")) is { } rate)
            throw Fail(rate, "a trace runs at its recorded times (scale them with 'speed')");
        var pathNode = b.Get("path") ?? throw Fail(b, "missing field 'path'");
        string path = Str(pathNode);
        if (path.Length == 0)
            throw Fail(pathNode, "an empty path");
        // Relative to the workload file, so a workload and its trace can move together.
        string baseDir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(file)) ?? ".";
        prog.TracePath = System.IO.Path.GetFullPath(System.IO.Path.Combine(baseDir, path));
        if (!System.IO.Directory.Exists(prog.TracePath))
            throw Fail(pathNode, $"no trace directory {prog.TracePath} (record one with 'criu-sharp record')");
        if (_ps != 4096)
            throw Fail(b, $"traces hold 4 KiB pages; this machine's architecture has {_ps}-byte pages");
        prog.Speed = b.Get("speed") is { } sp ? Dbl(sp, 0.001, 1000) : 1.0;
        prog.Loop = b.Get("loop") is { } lp && BoolOf(lp);
        if (!TraceLibrary.Registered)
            throw Fail(b, "this program cannot read traces");
        var trace = TraceLibrary.Get(prog.TracePath);
        if (b.Get("pid") is { } pidNode)
        {
            prog.TracePid = (int)UInt(pidNode, int.MaxValue);
            if (!trace.Pids.Contains(prog.TracePid.Value))
                throw Fail(pidNode, $"the trace has no process {prog.TracePid} (it has {string.Join(", ", trace.Pids)})");
        }
        else
            prog.TracePid = trace.Pids[0];
    }

    private void AddLedger(ProgramImage prog, string name, ulong bytes, JsonNode at)
    {
        prog.Ledger = prog.Regions.Count;
        AddRegion(prog, new RegionImage
        {
            Name = name,
            Size = Math.Max(_ps, (bytes + _ps - 1) / _ps * _ps),
            Prot = (int)(Prot.Read | Prot.Write),
            Line = at.Line,
        }, at);
    }

    private int RegionIndex(ProgramImage prog, JsonNode n)
    {
        string name = Str(n);
        int i = prog.Regions.FindIndex(r => r.Name == name);
        if (i < 0)
            throw Fail(n, $"no mapping named '{name}'" + (prog.Regions.Count > 0 ? $" (this process has {string.Join(", ", prog.Regions.Select(r => r.Name))})" : ""));
        return i;
    }

    // ---- script --------------------------------------------------------------------------

    private static readonly Dictionary<string, string[]> OpFields = new()
    {
        ["mmap"] = ["name", "size", "prot", "shared", "path", "huge", "address", "same_address", "populate"],
        ["munmap"] = ["region", "page", "offset", "pages", "length"],
        ["mremap"] = ["region", "new_size", "to_region", "move"],
        ["mprotect"] = ["region", "page", "offset", "pages", "length", "prot"],
        ["madvise"] = ["region", "page", "offset", "pages", "length", "advice"],
        ["brk"] = ["pages", "delta"],
        ["read"] = ["region", "page", "offset", "length"],
        ["write"] = ["region", "page", "offset", "bytes", "hex", "value", "length"],
        ["fork"] = [],
        ["swap_out"] = ["region", "page", "offset", "pages", "length"],
        ["clear_refs"] = ["value"],
        ["expect_pagemap"] = ["region", "page", "offset", "pagemap", "soft_dirty", "present", "swapped", "exclusive", "file", "uffd_wp"],
    };

    private static readonly Dictionary<string, Madvise> Advices = new()
    {
        ["normal"] = Madvise.Normal, ["random"] = Madvise.Random, ["sequential"] = Madvise.Sequential,
        ["willneed"] = Madvise.WillNeed, ["dontneed"] = Madvise.DontNeed, ["free"] = Madvise.Free,
        ["remove"] = Madvise.Remove, ["dontfork"] = Madvise.DontFork, ["dofork"] = Madvise.DoFork,
        ["hugepage"] = Madvise.HugePage, ["nohugepage"] = Madvise.NoHugePage, ["dontdump"] = Madvise.DontDump,
        ["dodump"] = Madvise.DoDump, ["cold"] = Madvise.Cold, ["pageout"] = Madvise.PageOut,
        ["populate_read"] = Madvise.PopulateRead, ["populate_write"] = Madvise.PopulateWrite,
        ["guard_install"] = Madvise.GuardInstall, ["guard_remove"] = Madvise.GuardRemove,
    };

    private static readonly (string Name, ulong Bit)[] ExpectBits =
    [
        ("soft_dirty", PagemapBits.SoftDirty), ("present", PagemapBits.Present), ("swapped", PagemapBits.Swap),
        ("exclusive", PagemapBits.Exclusive), ("file", PagemapBits.File), ("uffd_wp", PagemapBits.UffdWp),
    ];

    private void ReadScript(ProgramImage prog, JsonNode opsNode)
    {
        Expect(opsNode, JsonValueKind.Array, "an array of operations");
        foreach (var o in opsNode.Items)
        {
            Expect(o, JsonValueKind.Object, "an operation object");
            var opNode = o.Get("op") ?? throw Fail(o, "missing field 'op'");
            string op = Str(opNode);
            if (!OpFields.TryGetValue(op, out var fields))
                throw Fail(opNode, $"unknown operation '{op}' (expected {string.Join(", ", OpFields.Keys)})");
            CheckFields(o, ["op", "comment", .. fields]);
            var s = new ScriptOp { Op = op, Line = o.Line };
            switch (op)
            {
                case "mmap":
                {
                    var nameNode = o.Get("name") ?? throw Fail(o, "missing field 'name'");
                    string name = Str(nameNode);
                    int idx = prog.Regions.FindIndex(r => r.Name == name);
                    s.SameAddress = o.Get("same_address") is { } sa && BoolOf(sa);
                    if (idx < 0)
                    {
                        if (s.SameAddress)
                            throw Fail(o.Get("same_address")!, $"'{name}' has not been mapped before");
                        var sizeNode = o.Get("size") ?? throw Fail(o, "missing field 'size'");
                        var r = new RegionImage { Name = name, Size = MappingSize(sizeNode), Deferred = true, Line = o.Line };
                        idx = prog.Regions.Count;
                        AddRegion(prog, r, o);
                    }
                    var region = prog.Regions[idx];
                    // Each mmap op carries its own attributes: mapping again may change them.
                    s.Region = idx;
                    s.Length = o.Get("size") is { } sz ? MappingSize(sz) : region.Size;
                    s.Prot = o.Get("prot") is { } pr ? ProtOf(pr) : (int)(Prot.Read | Prot.Write);
                    s.Advice = o.Get("huge") is { } hg ? Str(hg) switch
                    {
                        "default" => 0,
                        "hugepage" => 1,
                        "nohugepage" => 2,
                        var other => throw Fail(hg, $"unknown huge-page advice '{other}'"),
                    } : 0;
                    bool shared = o.Get("shared") is { } sh && BoolOf(sh);
                    string? path = o.Get("path") is { } pa ? Str(pa) : null;
                    if (path is not null && !path.StartsWith('/'))
                        throw Fail(o.Get("path")!, "an absolute path is needed");
                    s.Bytes = Encoding.UTF8.GetBytes(path ?? "");
                    s.Delta = (shared ? 1 : 0) | (o.Get("populate") is { } po && BoolOf(po) ? 2 : 0);
                    if (o.Get("address") is { } ad)
                    {
                        if (s.SameAddress)
                            throw Fail(ad, "give either address or same_address");
                        s.NewSize = AddressOf(ad);
                    }
                    break;
                }
                case "munmap":
                case "swap_out":
                case "mprotect":
                case "madvise":
                    Range(prog, o, s, defaultPages: 0);
                    if (op == "mprotect")
                        s.Prot = ProtOf(o.Get("prot") ?? throw Fail(o, "missing field 'prot'"));
                    if (op == "madvise")
                    {
                        var an = o.Get("advice") ?? throw Fail(o, "missing field 'advice'");
                        s.Advice = Advices.TryGetValue(Str(an), out var a) ? (int)a
                            : throw Fail(an, $"unknown advice '{an.String}' (expected {string.Join(", ", Advices.Keys)})");
                    }
                    if (op == "swap_out")
                        s.Advice = (int)Madvise.PageOut;
                    break;
                case "mremap":
                    s.Region = RegionIndex(prog, o.Get("region") ?? throw Fail(o, "missing field 'region'"));
                    s.NewSize = o.Get("new_size") is { } ns ? MappingSize(ns) : 0;
                    s.ToRegion = o.Get("to_region") is { } tr ? RegionIndex(prog, tr) : -1;
                    s.Delta = o.Get("move") is { } mv && BoolOf(mv) || s.ToRegion >= 0 ? 1 : 0;
                    break;
                case "brk":
                    if (o.Get("pages") is { } pg)
                        s.Delta = checked((long)SignedInt(pg) * (long)_ps);
                    else if (o.Get("delta") is { } dl)
                        s.Delta = SignedInt(dl);
                    else
                        throw Fail(o, "missing field 'pages' or 'delta'");
                    break;
                case "read":
                    Point(prog, o, s);
                    s.Length = o.Get("length") is { } ln ? ByteSize(ln, allowZero: false) : 1;
                    break;
                case "write":
                {
                    Point(prog, o, s);
                    int given = (o.Get("bytes") is null ? 0 : 1) + (o.Get("hex") is null ? 0 : 1) + (o.Get("value") is null ? 0 : 1);
                    if (given != 1)
                        throw Fail(o, "a write needs exactly one of 'bytes', 'hex' or 'value'");
                    if (o.Get("bytes") is { } by)
                        s.Bytes = Encoding.UTF8.GetBytes(Str(by));
                    else if (o.Get("hex") is { } hx)
                    {
                        try { s.Bytes = Convert.FromHexString(Str(hx)); }
                        catch (FormatException) { throw Fail(hx, "not a hex string"); }
                    }
                    else
                    {
                        byte v = (byte)UInt(o.Get("value")!, 255);
                        ulong len = o.Get("length") is { } lnv ? ByteSize(lnv, allowZero: false) : 1;
                        if (len > 1 << 24)
                            throw Fail(o.Get("length")!, "at most 16 MiB per write");
                        s.Bytes = new byte[len];
                        Array.Fill(s.Bytes, v);
                    }
                    if (o.Get("length") is { } stray && o.Get("value") is null)
                        throw Fail(stray, "'length' goes with 'value'");
                    if (s.Bytes.Length == 0)
                        throw Fail(o, "nothing to write");
                    break;
                }
                case "clear_refs":
                    s.ClearRefs = o.Get("value") is { } cv ? (cv.Kind == JsonValueKind.Number ? cv.RawNumber : Str(cv)) : "4";
                    break;
                case "expect_pagemap":
                {
                    Point(prog, o, s);
                    if (o.Get("pagemap") is { } pm)
                    {
                        s.PagemapFile = Str(pm);
                        if (s.PagemapFile is not ("pagemap" or "pagemap2"))
                            throw Fail(pm, "expected pagemap or pagemap2");
                    }
                    var text = new List<string>();
                    foreach (var (name, bit) in ExpectBits)
                    {
                        if (o.Get(name) is not { } bn)
                            continue;
                        s.ExpectMask |= bit;
                        if (BoolOf(bn))
                            s.ExpectValue |= bit;
                        text.Add($"{name}={(BoolOf(bn) ? 1 : 0)}");
                    }
                    if (s.ExpectMask == 0)
                        throw Fail(o, "an expectation needs at least one of " + string.Join(", ", ExpectBits.Select(x => x.Name)));
                    s.Text = string.Join(" ", text);
                    break;
                }
            }
            prog.Ops.Add(s);
        }
    }

    private void Point(ProgramImage prog, JsonNode o, ScriptOp s)
    {
        s.Region = RegionIndex(prog, o.Get("region") ?? throw Fail(o, "missing field 'region'"));
        ulong page = o.Get("page") is { } pg ? UInt(pg, 1UL << 40) : 0;
        ulong off = o.Get("offset") is { } of ? ByteSize(of, allowZero: true) : 0;
        s.Offset = page * _ps + off;
    }

    private void Range(ProgramImage prog, JsonNode o, ScriptOp s, ulong defaultPages)
    {
        Point(prog, o, s);
        if (o.Get("pages") is { } pg && o.Get("length") is { } ln)
            throw Fail(ln, "give either pages or length");
        if (o.Get("pages") is { } p)
            s.Length = UInt(p, 1UL << 40) * _ps;
        else if (o.Get("length") is { } l)
            s.Length = ByteSize(l, allowZero: false);
        else
            s.Length = defaultPages * _ps; // 0: to the end of the region
    }

    // ---- scalar readers ------------------------------------------------------------------

    private void CheckFields(JsonNode obj, string[] allowed)
    {
        foreach (var (name, line, _) in obj.Members)
            if (Array.IndexOf(allowed, name) < 0)
                throw new WorkloadException(file, line, obj.Path.Length == 0 ? name : obj.Path + "." + name,
                    $"unknown field '{name}' (expected one of {string.Join(", ", allowed.Where(a => a != "comment"))})");
        var seen = new HashSet<string>();
        foreach (var (name, line, _) in obj.Members)
            if (!seen.Add(name))
                throw new WorkloadException(file, line, obj.Path.Length == 0 ? name : obj.Path + "." + name, "the field is given twice");
    }

    private void Expect(JsonNode n, JsonValueKind kind, string what)
    {
        if (n.Kind != kind)
            throw Fail(n, $"expected {what}, got {Describe(n)}");
    }

    private static string Describe(JsonNode n) => n.Kind switch
    {
        JsonValueKind.String => $"the string \"{n.String}\"",
        JsonValueKind.Number => $"the number {n.RawNumber}",
        JsonValueKind.True or JsonValueKind.False => "a boolean",
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        _ => "null",
    };

    private string Str(JsonNode n)
    {
        Expect(n, JsonValueKind.String, "a string");
        return n.String!;
    }

    private bool BoolOf(JsonNode n)
    {
        if (n.Kind is not (JsonValueKind.True or JsonValueKind.False))
            throw Fail(n, $"expected true or false, got {Describe(n)}");
        return n.Bool;
    }

    private ulong UInt(JsonNode n, ulong max)
    {
        if (n.Kind != JsonValueKind.Number || !ulong.TryParse(n.RawNumber, NumberStyles.None, CultureInfo.InvariantCulture, out ulong v))
            throw Fail(n, $"expected a non-negative integer, got {Describe(n)}");
        if (v > max)
            throw Fail(n, $"{v} is too large (at most {max})");
        return v;
    }

    private long SignedInt(JsonNode n)
    {
        if (n.Kind == JsonValueKind.String)
        {
            string t = n.String!.Trim();
            bool neg = t.StartsWith('-');
            if (!Units.TryParse(neg || t.StartsWith('+') ? t[1..] : t, _ps, out ulong b) || b > long.MaxValue)
                throw Fail(n, $"not a size: \"{n.String}\"");
            return neg ? -(long)b : (long)b;
        }
        if (n.Kind != JsonValueKind.Number || !long.TryParse(n.RawNumber, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v))
            throw Fail(n, $"expected an integer, got {Describe(n)}");
        return v;
    }

    private double Dbl(JsonNode n, double min, double max)
    {
        if (n.Kind != JsonValueKind.Number)
            throw Fail(n, $"expected a number, got {Describe(n)}");
        if (!(n.Number >= min && n.Number <= max))
            throw Fail(n, $"{n.RawNumber} is outside [{min.ToString(CultureInfo.InvariantCulture)}, {max.ToString(CultureInfo.InvariantCulture)}]");
        return n.Number;
    }

    private uint Share(JsonNode? n, double dflt)
    {
        double v = n is null ? dflt : Dbl(n, 0, 1);
        return v >= 1 ? uint.MaxValue : (uint)(v * 4294967296.0);
    }

    private ulong ByteSize(JsonNode n, bool allowZero)
    {
        ulong v;
        if (n.Kind == JsonValueKind.Number)
            v = UInt(n, ulong.MaxValue);
        else if (n.Kind == JsonValueKind.String)
        {
            if (!Units.TryParse(n.String!, _ps, out v))
                throw Fail(n, $"not a size: \"{n.String}\" (examples: 4096, \"64KiB\", \"256MiB\", \"1GiB\", \"3 pages\")");
        }
        else
            throw Fail(n, $"expected a size, got {Describe(n)}");
        if (v == 0 && !allowZero)
            throw Fail(n, "the size must be greater than zero");
        return v;
    }

    /// <summary>A mapping length: rounded up to whole pages as mmap does.</summary>
    private ulong MappingSize(JsonNode n)
    {
        ulong v = ByteSize(n, allowZero: false);
        if (v > kernel.Arch.TaskSize)
            throw Fail(n, $"{Units.Format(v)} is larger than the user address space");
        return (v + _ps - 1) / _ps * _ps;
    }

    private ulong AddressOf(JsonNode n)
    {
        ulong v;
        if (n.Kind == JsonValueKind.String)
        {
            string t = n.String!;
            if (!(t.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
                  && ulong.TryParse(t.AsSpan(2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out v)))
                throw Fail(n, $"not a hex address: \"{t}\" (example: \"0x7f0000000000\")");
        }
        else
            v = UInt(n, ulong.MaxValue);
        if (v % _ps != 0)
            throw Fail(n, $"0x{v:x} is not aligned to the {_ps}-byte page size");
        if (v < 0x10000 || v >= kernel.Arch.TaskSize)
            throw Fail(n, $"0x{v:x} is outside the user address space (0x10000-0x{kernel.Arch.TaskSize:x})");
        return v;
    }

    private int ProtOf(JsonNode n)
    {
        string t = Str(n);
        if (t == "none")
            return 0;
        int p = 0;
        foreach (char c in t)
        {
            p |= c switch
            {
                'r' => (int)Prot.Read,
                'w' => (int)Prot.Write,
                'x' => (int)Prot.Exec,
                '-' => 0,
                _ => throw Fail(n, $"not a protection: \"{t}\" (examples: \"rw\", \"r\", \"r-x\", \"none\")"),
            };
        }
        return p;
    }
}

/// <summary>
/// Sizes ("64MiB", "4k", "3 pages"), durations ("2s", "500ms", "1.5s") and addresses as workload
/// files and command lines write them: the one parser of each, with overflow checked.
/// </summary>
public static class Units
{
    /// <summary>
    /// The longest duration accepted: one day of virtual time. Simulated time runs no faster than
    /// the host executes the workloads, so a longer run is a typing mistake, and beyond 2^64 ns the
    /// uptime counter would wrap.
    /// </summary>
    public const ulong MaxDurationNs = 86_400UL * 1_000_000_000;

    /// <summary>Parses a duration; returns null, or why <paramref name="text"/> is not one.</summary>
    public static string? TryParseDurationNs(string text, out ulong ns)
    {
        ns = 0;
        var t = text.Trim().ToLowerInvariant();
        (string suffix, double scale)[] units = [("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)];
        foreach (var (suffix, scale) in units.OrderByDescending(u => u.suffix.Length))
            if (t.EndsWith(suffix, StringComparison.Ordinal)
                && double.TryParse(t[..^suffix.Length], NumberStyles.Float, CultureInfo.InvariantCulture, out double v))
            {
                if (v < 0)
                    return $"'{text}': a duration must not be negative";
                // Compared as doubles: a cast of an out-of-range double to ulong saturates or wraps.
                if (!double.IsFinite(v) || v * scale > MaxDurationNs)
                    return $"'{text}' is out of range: durations go up to 24h (86400s)";
                ns = (ulong)Math.Round(v * scale);
                return null;
            }
        return $"'{text}' is not a duration (examples: 2s, 500ms, 1.5s, 100us)";
    }

    /// <summary>Parses a hexadecimal address, with or without 0x.</summary>
    public static bool TryParseAddress(string text, out ulong address)
    {
        var t = text.Trim();
        if (t.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
            t = t[2..];
        return ulong.TryParse(t, NumberStyles.HexNumber, CultureInfo.InvariantCulture, out address);
    }

    /// <summary>Parses "4096", "64KiB", "256 MiB", "1GiB", "2M", "3 pages" (page = <paramref name="pageSize"/>).</summary>
    public static bool TryParse(string text, ulong pageSize, out ulong bytes)
    {
        bytes = 0;
        string t = text.Trim();
        int i = 0;
        while (i < t.Length && char.IsAsciiDigit(t[i]))
            i++;
        if (i == 0 || !ulong.TryParse(t.AsSpan(0, i), NumberStyles.None, CultureInfo.InvariantCulture, out ulong n))
            return false;
        string unit = t[i..].Trim();
        ulong mul = unit switch
        {
            "" or "B" => 1,
            "K" or "KiB" or "k" => 1UL << 10,
            "M" or "MiB" => 1UL << 20,
            "G" or "GiB" => 1UL << 30,
            "T" or "TiB" => 1UL << 40,
            "KB" or "kB" => 1000,
            "MB" => 1000_000,
            "GB" => 1000_000_000,
            "page" or "pages" => pageSize,
            _ => 0,
        };
        if (mul == 0)
            return false;
        try
        {
            bytes = checked(n * mul);
        }
        catch (OverflowException)
        {
            return false;
        }
        return true;
    }

    public static string Format(ulong bytes) =>
        bytes >= 1UL << 30 && bytes % (1UL << 30) == 0 ? $"{bytes >> 30} GiB"
        : bytes >= 1UL << 20 && bytes % (1UL << 20) == 0 ? $"{bytes >> 20} MiB"
        : bytes >= 1UL << 10 && bytes % (1UL << 10) == 0 ? $"{bytes >> 10} KiB"
        : $"{bytes} B";
}

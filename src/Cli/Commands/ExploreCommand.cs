using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using CriuSharp.ImageFormat;
using CriuSharp.ImageFormat.Images;

namespace CriuSharp.Cli;

/// <summary>
/// <c>x DIR ps|mems|rss|stats</c>: crit x's explorers, extended to the parent chain and to the
/// compressed sizes recorded in our pagemap entries.
/// </summary>
internal static class ExploreCommand
{
    public static Command Create()
    {
        var dir = new Argument<string>("dir") { Description = "Images directory." };
        var what = new Argument<string>("what") { Description = "ps: process tree; mems: VMAs; rss: pages per VMA and per chain level; stats: dump/restore stats." };
        what.AcceptOnlyFromAmong("ps", "mems", "rss", "stats");
        var json = CommonOptions.Json();
        var cmd = new Command("x", "Explore an images directory, including its parent chain.") { dir, what, json };
        cmd.SetAction(parse =>
        {
            var set = ImageSet.Open(ImageCommandSupport.RequireDirectory(parse.GetValue(dir)!));
            var output = parse.InvocationConfiguration.Output;
            JsonNode result = parse.GetValue(what) switch
            {
                "ps" => Ps(set),
                "mems" => Mems(set),
                "rss" => Rss(set),
                _ => Stats(set),
            };
            if (parse.GetValue(json))
                ImageCommandSupport.WriteJson(output, JsonShape(set, parse.GetValue(what)!, result));
            else
                PrintText(output, parse.GetValue(what)!, result);
            return 0;
        });
        return cmd;
    }

    private static string Hex(ulong v) => "0x" + v.ToString("x", CultureInfo.InvariantCulture);

    private static JsonArray Ps(ImageSet set)
    {
        var arr = new JsonArray();
        foreach (var p in set.ReadPstree())
        {
            string? comm = set.Has(ImageNames.Core((int)p.Pid)) ? set.ReadCore((int)p.Pid).Tc?.Comm : null;
            arr.Add(new JsonObject
            {
                ["pid"] = p.Pid, ["ppid"] = p.Ppid, ["pgid"] = p.Pgid, ["sid"] = p.Sid,
                ["comm"] = comm, ["threads"] = new JsonArray(p.Threads.Select(t => (JsonNode)t).ToArray()),
            });
        }
        return arr;
    }

    private static string VmaLabel(vma_entry v, Dictionary<ulong, string> files)
    {
        const uint Stack = 0x2, Vsyscall = 0x4, Vdso = 0x8, Heap = 0x20, FilePrivate = 0x40, FileShared = 0x80, AnonShared = 0x100, SysVIpc = 0x400;
        if ((v.Status & SysVIpc) != 0) return "[sysv-shm]";
        if ((v.Status & (FilePrivate | FileShared)) != 0) return files.TryGetValue(v.Shmid, out var n) ? n : $"[file {v.Shmid}]";
        if ((v.Status & Stack) != 0) return "[stack]";
        if ((v.Status & Heap) != 0) return "[heap]";
        if ((v.Status & Vdso) != 0) return "[vdso]";
        if ((v.Status & Vsyscall) != 0) return "[vsyscall]";
        if ((v.Status & AnonShared) != 0) return "[anon-shared]";
        return "";
    }

    private static string Prot(uint prot) =>
        $"{((prot & 1) != 0 ? 'r' : '-')}{((prot & 2) != 0 ? 'w' : '-')}{((prot & 4) != 0 ? 'x' : '-')}";

    private static Dictionary<ulong, string> FileNames(ImageSet set)
    {
        var names = new Dictionary<ulong, string>();
        if (set.Has(ImageNames.Files))
            foreach (var f in set.ReadFiles())
                if (f.Reg is not null)
                    names[f.Id] = f.Reg.Name;
        return names;
    }

    private static JsonArray Mems(ImageSet set)
    {
        var files = FileNames(set);
        var arr = new JsonArray();
        foreach (var p in set.ReadPstree())
        {
            var mm = set.ReadMm((int)p.Pid);
            var vmas = new JsonArray();
            foreach (var v in mm.Vmas)
                vmas.Add(new JsonObject { ["start"] = Hex(v.Start), ["end"] = Hex(v.End), ["prot"] = Prot(v.Prot), ["status"] = v.Status, ["label"] = VmaLabel(v, files) });
            arr.Add(new JsonObject
            {
                ["pid"] = p.Pid,
                ["exe"] = files.TryGetValue(mm.ExeFileId, out var exe) ? exe : null,
                ["vmas"] = vmas,
            });
        }
        return arr;
    }

    private static JsonArray Rss(ImageSet set)
    {
        var files = FileNames(set);
        var arr = new JsonArray();
        IEnumerable<int> pids = set.Has(ImageNames.Pstree) ? set.ReadPstree().Select(p => (int)p.Pid) : set.PagemapPids();
        foreach (int pid in pids)
        {
            var levels = new JsonArray();
            foreach (var level in set.Chain())
            {
                if (!level.HasPagemap(pid))
                    continue;
                var map = level.ReadPagemap(pid);
                ulong present = 0, parent = 0, lazy = 0, zero = 0, delta = 0;
                long stored = 0, deltaBytes = 0;
                for (int i = 0; i < map.Entries.Count; i++)
                {
                    var e = map.Entries[i];
                    ulong nr = PagemapImage.NrPages(e);
                    var flags = PagemapImage.FlagsOf(e);
                    if ((flags & PagemapFlags.Present) != 0)
                    {
                        present += nr;
                        foreach (byte b in e.ZeroPages.Span)
                            zero += (ulong)System.Numerics.BitOperations.PopCount(b);
                        stored += map.StoredBytes(i);
                    }
                    else if ((flags & PagemapFlags.Parent) != 0)
                        parent += nr;
                    else if ((flags & PagemapFlags.Delta) != 0)
                    {
                        delta += nr;
                        foreach (uint d in e.DeltaSizes)
                            deltaBytes += d;
                    }
                    else if ((flags & PagemapFlags.Lazy) != 0)
                        lazy += nr;
                }
                levels.Add(new JsonObject
                {
                    ["dir"] = level.Path, ["depth"] = level.Depth, ["pages_file"] = map.PagesFileName,
                    ["compression"] = map.Compression.ToString().ToLowerInvariant(),
                    ["block_pages"] = map.Compression == PageCompression.None ? null : map.BlockPages,
                    ["entries"] = map.Entries.Count, ["pages_present"] = present, ["pages_parent"] = parent,
                    ["pages_lazy"] = lazy, ["zero_pages_skipped"] = zero, ["pages_delta"] = delta, ["delta_bytes"] = deltaBytes,
                    ["bytes_raw"] = present * PageGeometry.PageSize, ["bytes_stored"] = stored,
                });
            }
            var vmas = new JsonArray();
            if (set.Has(ImageNames.Mm(pid)) && set.HasPagemap(pid))
            {
                var map = set.ReadPagemap(pid);
                foreach (var v in set.ReadMm(pid).Vmas)
                {
                    ulong present = 0, parent = 0, lazy = 0;
                    for (int i = map.FirstEntryEndingAfter(v.Start); i < map.Entries.Count && map.Entries[i].Vaddr < v.End; i++)
                    {
                        var e = map.Entries[i];
                        ulong s = Math.Max(e.Vaddr, v.Start);
                        ulong end = Math.Min(e.Vaddr + (PagemapImage.NrPages(e) << PageGeometry.PageShift), v.End);
                        ulong nr = (end - s) >> PageGeometry.PageShift;
                        var flags = PagemapImage.FlagsOf(e);
                        if ((flags & PagemapFlags.Present) != 0) present += nr;
                        // A delta page's base lives in the parent: counted with the parent's pages.
                        else if ((flags & (PagemapFlags.Parent | PagemapFlags.Delta)) != 0) parent += nr;
                        else lazy += nr;
                    }
                    if (present + parent + lazy == 0)
                        continue;
                    vmas.Add(new JsonObject
                    {
                        ["start"] = Hex(v.Start), ["end"] = Hex(v.End), ["label"] = VmaLabel(v, files),
                        ["pages_present"] = present, ["pages_parent"] = parent, ["pages_lazy"] = lazy,
                    });
                }
            }
            arr.Add(new JsonObject { ["pid"] = pid, ["chain"] = levels, ["vmas"] = vmas });
        }
        return arr;
    }

    /// <summary>The --json object: the directory under images_dir, the rows under a name per view, times in ns.</summary>
    private static JsonObject JsonShape(ImageSet set, string what, JsonNode rows)
    {
        if (what == "stats")
        {
            var levels = new JsonArray();
            foreach (var level in rows.AsArray().OfType<JsonObject>())
            {
                var o = new JsonObject { ["images_dir"] = level["dir"]?.DeepClone(), ["depth"] = level["depth"]?.DeepClone() };
                foreach (var key in new[] { "dump", "restore" })
                    if (level[key] is JsonObject s)
                        o[key] = JsonOut.StatsFromCrit(s);
                levels.Add(o);
            }
            return new JsonObject { ["images_dir"] = set.Path, ["levels"] = levels };
        }
        return new JsonObject { ["images_dir"] = set.Path, ["processes"] = rows.DeepClone() };
    }

    private static JsonArray Stats(ImageSet set)
    {
        var arr = new JsonArray();
        foreach (var level in set.Chain())
        {
            var o = new JsonObject { ["dir"] = level.Path, ["depth"] = level.Depth };
            if (level.ReadDumpStats() is { } d)
                o["dump"] = JsonNode.Parse(ImageFormat.Json.CritJson.MessageToJson(d, pretty: false));
            if (level.ReadRestoreStats() is { } r)
                o["restore"] = JsonNode.Parse(ImageFormat.Json.CritJson.MessageToJson(r, pretty: false));
            arr.Add(o);
        }
        return arr;
    }

    private static void PrintText(TextWriter o, string what, JsonNode result)
    {
        switch (what)
        {
            case "ps":
            {
                var procs = result.AsArray();
                o.WriteLine($"{"PID",-8}{"PGID",-8}{"SID",-8}COMM");
                void Print(uint ppid, int depth)
                {
                    foreach (var p in procs)
                    {
                        if ((uint)p!["ppid"]! != ppid)
                            continue;
                        uint pid = (uint)p["pid"]!;
                        // crit's ps lists processes only; the other threads of one follow its comm.
                        var others = p["threads"]!.AsArray().Select(t => (uint)t!).Where(t => t != pid).ToList();
                        string threads = others.Count == 0 ? "" : $"  threads {string.Join(' ', others)}";
                        o.WriteLine($"{new string(' ', depth * 2) + pid,-8}{(uint)p["pgid"]!,-8}{(uint)p["sid"]!,-8}{(string?)p["comm"]}{threads}");
                        if (pid != ppid)
                            Print(pid, depth + 1);
                    }
                }
                Print(0, 0);
                break;
            }
            case "mems":
                foreach (var p in result.AsArray())
                {
                    o.WriteLine($"pid {p!["pid"]}  exe {(string?)p["exe"] ?? "?"}");
                    foreach (var v in p["vmas"]!.AsArray())
                        o.WriteLine($"  {(string)v!["start"]!,18}-{(string)v["end"]!,-18} {(string)v["prot"]!} {(string)v["label"]!}");
                }
                break;
            case "rss":
                foreach (var p in result.AsArray())
                {
                    o.WriteLine($"pid {p!["pid"]}");
                    foreach (var l in p["chain"]!.AsArray())
                    {
                        ulong raw = (ulong)l!["bytes_raw"]!;
                        long stored = (long)l["bytes_stored"]!;
                        string ratio = stored > 0 ? ((double)raw / stored).ToString("0.00", CultureInfo.InvariantCulture) + "x" : "-";
                        string codec = l["block_pages"] is null ? "none" : $"{(string)l["compression"]!}/{l["block_pages"]}p";
                        o.WriteLine($"  [{l["depth"]}] {(string)l["dir"]!}: {l["pages_file"]} {codec}  present {l["pages_present"]} (zero {l["zero_pages_skipped"]})  parent {l["pages_parent"]}  lazy {l["pages_lazy"]}  stored {stored} of {raw} bytes ({ratio}){((ulong)l["pages_delta"]! > 0 ? $"  delta {l["pages_delta"]} ({l["delta_bytes"]} bytes)" : "")}");
                    }
                    foreach (var v in p["vmas"]!.AsArray())
                        o.WriteLine($"    {(string)v!["start"]!,18}-{(string)v["end"]!,-18} present {v["pages_present"],-6} parent {v["pages_parent"],-6} lazy {v["pages_lazy"],-6} {(string)v["label"]!}");
                }
                break;
            default:
                foreach (var l in result.AsArray())
                {
                    o.WriteLine($"[{l!["depth"]}] {(string)l["dir"]!}");
                    foreach (var key in new[] { "dump", "restore" })
                    {
                        if (l[key] is not JsonObject s)
                            continue;
                        o.WriteLine($"  {key}:");
                        foreach (var (k, v) in s)
                            o.WriteLine($"    {k,-24} {v}");
                    }
                }
                break;
        }
    }
}

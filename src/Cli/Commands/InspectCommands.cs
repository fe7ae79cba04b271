using System.CommandLine;
using System.Text;
using System.Text.Json;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Proc;

namespace CriuSharp.Cli;

/// <summary>maps, smaps, pagemap and clear-refs: the /proc files of a process on the machine.</summary>
public static class InspectCommands
{
    private static Command ProcText(string name, string description, Func<Kernel, int, string> read)
    {
        var pid = PidOption.Create();
        var machine = new MachineOptions();
        var cmd = new Command(name, description);
        cmd.Options.Add(pid);
        machine.AddTo(cmd);
        cmd.SetAction(p =>
        {
            using var m = machine.Open(p);
            var t = PidOption.Resolve(m.Kernel, p.GetValue(pid));
            p.InvocationConfiguration.Output.Write(read(m.Kernel, t.Pid));
            return 0;
        });
        return cmd;
    }

    public static Command Maps() => ProcText("maps", "Print /proc/PID/maps.", (k, pid) => k.Proc.Maps(pid));
    public static Command Smaps() => ProcText("smaps", "Print /proc/PID/smaps (VmFlags shows sd for VM_SOFTDIRTY).", (k, pid) => k.Proc.Smaps(pid));

    public static Command Pagemap()
    {
        var pid = PidOption.Create();
        var range = new Option<string?>("--range") { Description = "Address range START-END in hex (default: every mapping of the process)." };
        var format = new Option<string?>("--format") { Description = "Entry layout: modern, pagemap2 or v1 (default: the kernel's /proc/PID/pagemap)." };
        format.AcceptOnlyFromAmong("modern", "pagemap2", "v1");
        var sdOnly = new Option<bool>("--soft-dirty-only") { Description = "Show only entries with the soft-dirty bit (55)." };
        var machine = new MachineOptions();
        var json = CommonOptions.Json();
        var cmd = new Command("pagemap", "Decode /proc/PID/pagemap entries: present, swapped, soft-dirty, exclusive, uffd-wp, file, PFN or swap slot.");
        cmd.Options.Add(pid);
        cmd.Options.Add(range);
        cmd.Options.Add(format);
        cmd.Options.Add(sdOnly);
        machine.AddTo(cmd);
        cmd.Options.Add(json);
        cmd.SetAction(p =>
        {
            using var m = machine.Open(p);
            var k = m.Kernel;
            var t = PidOption.Resolve(k, p.GetValue(pid));
            var layout = p.GetValue(format) switch
            {
                "modern" => PagemapLayout.Modern,
                "pagemap2" => PagemapLayout.Pagemap2,
                "v1" => PagemapLayout.V1,
                _ => k.Version.PagemapLayout,
            };
            ulong ps = (ulong)k.Arch.PageSize;
            var ranges = new List<(ulong Start, ulong End)>();
            if (p.GetValue(range) is { } r)
            {
                int dash = r.IndexOf('-');
                if (dash <= 0)
                    throw new UserException(ExitCode.Usage, $"--range '{r}' is not START-END");
                ulong a = CommonOptions.ParseAddress(r[..dash]) & ~(ps - 1), b = CommonOptions.ParseAddress(r[(dash + 1)..]);
                if (b <= a || b > k.Arch.TaskSize)
                    throw new UserException(ExitCode.Usage, $"--range '{r}' is empty or beyond the user address space");
                ranges.Add((a, b));
            }
            else
                ranges.AddRange(t.MappedRanges);
            var o = p.InvocationConfiguration.Output;
            bool asJson = p.GetValue(json);
            bool onlySd = p.GetValue(sdOnly);
            var rows = new List<object>();
            if (!asJson)
                o.WriteLine($"{"ADDRESS",-16}  {"ENTRY",-16}  FLAGS");
            var buf = new ulong[4096];
            var line = new StringBuilder();
            foreach (var (start, end) in ranges)
            {
                for (ulong va = start; va < end;)
                {
                    int n = (int)Math.Min((ulong)buf.Length, (end - va + ps - 1) / ps);
                    k.Proc.ReadPagemap(t.Pid, va, buf.AsSpan(0, n), layout);
                    for (int i = 0; i < n; i++, va += ps)
                    {
                        ulong e = buf[i];
                        bool sd = layout != PagemapLayout.V1 && PagemapBits.IsSoftDirty(e);
                        if (onlySd && !sd)
                            continue;
                        if (asJson)
                            rows.Add(Describe(va, e, layout));
                        else
                        {
                            line.Clear().Append(va.ToString("x16")).Append("  ").Append(e.ToString("x16")).Append("  ").Append(Flags(e, layout));
                            o.WriteLine(line);
                        }
                    }
                }
            }
            if (asJson)
                o.WriteLine(JsonSerializer.Serialize(new { pid = t.Pid, layout = layout.ToString().ToLowerInvariant(), entries = rows }, JsonOut.Options));
            return 0;
        });
        return cmd;
    }

    private static object Describe(ulong va, ulong e, PagemapLayout layout)
    {
        bool present = PagemapBits.IsPresent(e), swapped = PagemapBits.IsSwapped(e);
        bool modern = layout == PagemapLayout.Modern;
        return new
        {
            address = $"0x{va:x}",
            entry = $"0x{e:x16}",
            present,
            swapped,
            soft_dirty = layout != PagemapLayout.V1 && PagemapBits.IsSoftDirty(e),
            exclusive = modern && PagemapBits.IsExclusive(e),
            uffd_wp = modern && PagemapBits.IsUffdWp(e),
            guard = modern && (e & PagemapBits.Guard) != 0,
            file = PagemapBits.IsFile(e),
            pfn = present ? PagemapBits.Pfn(e) : (ulong?)null,
            swap_type = swapped ? PagemapBits.SwapType(e) : (ulong?)null,
            swap_offset = swapped ? PagemapBits.SwapOffset(e) : (ulong?)null,
        };
    }

    private static string Flags(ulong e, PagemapLayout layout)
    {
        var f = new List<string>();
        bool modern = layout == PagemapLayout.Modern;
        if (PagemapBits.IsPresent(e)) f.Add($"present pfn=0x{PagemapBits.Pfn(e):x}");
        if (PagemapBits.IsSwapped(e)) f.Add($"swapped type={PagemapBits.SwapType(e)} offset={PagemapBits.SwapOffset(e)}");
        if (layout != PagemapLayout.V1 && PagemapBits.IsSoftDirty(e)) f.Add("soft-dirty");
        if (modern && PagemapBits.IsExclusive(e)) f.Add("exclusive");
        if (modern && PagemapBits.IsUffdWp(e)) f.Add("uffd-wp");
        if (modern && (e & PagemapBits.Guard) != 0) f.Add("guard");
        if (PagemapBits.IsFile(e)) f.Add("file");
        if (layout == PagemapLayout.V1) f.Add($"shift={(e >> PagemapBits.V1PageShiftBit) & 0x3f}");
        return f.Count == 0 ? "-" : string.Join(',', f);
    }

    public static Command ClearRefs()
    {
        var pid = PidOption.Create();
        var value = new Argument<string>("value") { Description = "What to write, as 'echo VALUE > /proc/PID/clear_refs' would: 1 all, 2 anon, 3 mapped, 4 soft-dirty, 5 peak RSS." };
        var machine = new MachineOptions();
        var cmd = new Command("clear-refs", "Write to /proc/PID/clear_refs (4 clears soft-dirty and write-protects every page).");
        cmd.Options.Add(pid);
        cmd.Arguments.Add(value);
        machine.AddTo(cmd);
        cmd.SetAction(p =>
        {
            using var m = machine.Open(p);
            var t = PidOption.Resolve(m.Kernel, p.GetValue(pid));
            m.Kernel.Proc.Open(t.Pid, "clear_refs", OpenMode.WriteOnly, out var f).OrThrow("open clear_refs");
            var r = f!.Write(Encoding.ASCII.GetBytes(p.GetValue(value) + "\n"));
            if (!r.Ok)
                throw new UserException(ExitCode.KernelError, $"write /proc/{t.Pid}/clear_refs: {r.Error} ({ErrnoText.Describe(r.Error)})",
                    "Accepted values are 1 to 5 (see --help).");
            m.Save();
            return 0;
        });
        return cmd;
    }
}

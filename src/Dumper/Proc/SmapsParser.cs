using System.Globalization;

namespace CriuSharp.Dumper.Proc;

/// <summary>
/// Parses /proc/PID/smaps text as Linux formats it (show_map_vma: "start-end perms offset
/// maj:min inode [pad] name", then "Key: value kB" lines and "VmFlags: xx yy"). Once per task and
/// dump, so plain string handling is fine here.
/// </summary>
public static class SmapsParser
{
    public static List<VmaInfo> Parse(string smaps)
    {
        var list = new List<VmaInfo>();
        VmaInfo? cur = null;
        foreach (var raw in smaps.Split('\n'))
        {
            if (raw.Length == 0)
                continue;
            var line = raw.AsSpan();
            int colon = line.IndexOf(':');
            int dash = line.IndexOf('-');
            bool header = dash > 0 && (colon < 0 || colon > dash) && IsHex(line[..dash]);
            if (header)
            {
                if (cur is not null) list.Add(cur);
                cur = ParseHeader(raw);
                continue;
            }
            if (cur is null)
                continue;
            if (line.StartsWith("VmFlags:"))
                cur = cur with { VmFlags = ParseFlags(raw[8..]) };
            else if (line.StartsWith("KernelPageSize:"))
                cur = cur with { KernelPageBytes = ulong.Parse(raw[15..].Replace("kB", "").Trim(), CultureInfo.InvariantCulture) * 1024 };
            else if (line.StartsWith("AnonHugePages:"))
                cur = cur with { AnonHugeBytes = ulong.Parse(raw[14..].Replace("kB", "").Trim(), CultureInfo.InvariantCulture) * 1024 };
        }
        if (cur is not null) list.Add(cur);
        return list;
    }

    /// <summary>Parses /proc/PID/maps (no VmFlags: vsyscall and friends are recognised by name).</summary>
    public static List<VmaInfo> ParseMaps(string maps) => Parse(maps);

    private static bool IsHex(ReadOnlySpan<char> s)
    {
        foreach (char c in s)
            if (!char.IsAsciiHexDigit(c)) return false;
        return s.Length > 0;
    }

    internal static VmaInfo ParseHeader(string line)
    {
        // Fields are separated by single spaces until the inode; the name follows padding.
        var parts = line.Split(' ', 6, StringSplitOptions.None);
        var range = parts[0].Split('-');
        ulong start = ulong.Parse(range[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        ulong end = ulong.Parse(range[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        string perms = parts[1];
        uint prot = (perms[0] == 'r' ? VmaInfo.ProtRead : 0) | (perms[1] == 'w' ? VmaInfo.ProtWrite : 0) | (perms[2] == 'x' ? VmaInfo.ProtExec : 0);
        bool shared = perms[3] == 's';
        ulong pgoff = ulong.Parse(parts[2], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        var dev = parts[3].Split(':');
        uint maj = uint.Parse(dev[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        uint min = uint.Parse(dev[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        ulong inode = ulong.Parse(parts[4], CultureInfo.InvariantCulture);
        string? name = parts.Length > 5 ? parts[5].Trim() : null;
        if (string.IsNullOrEmpty(name)) name = null;
        return new VmaInfo(start, end, prot, shared, pgoff, maj, min, inode, name, SmapsFlags.None, 0);
    }

    private static SmapsFlags ParseFlags(string text)
    {
        var f = SmapsFlags.None;
        foreach (var m in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            f |= m switch
            {
                "gd" => SmapsFlags.GrowsDown,
                "lo" => SmapsFlags.Locked,
                "io" => SmapsFlags.Io,
                "pf" => SmapsFlags.PfnMap,
                "sr" => SmapsFlags.SeqRead,
                "rr" => SmapsFlags.RandRead,
                "dc" => SmapsFlags.DontCopy,
                "nr" => SmapsFlags.NoReserve,
                "ht" => SmapsFlags.HugeTlb,
                "dd" => SmapsFlags.DontDump,
                "sd" => SmapsFlags.SoftDirty,
                "hg" => SmapsFlags.HugePage,
                "nh" => SmapsFlags.NoHugePage,
                "mg" => SmapsFlags.Mergeable,
                "uw" => SmapsFlags.UffdWp,
                "wf" => SmapsFlags.WipeOnFork,
                _ => SmapsFlags.None,
            };
        return f;
    }
}

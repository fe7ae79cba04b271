using System.Globalization;

namespace CriuSharp.HostKernel;

/// <summary>
/// Text files of the host's /proc (proc(5)). Every read names the pid in its error, and tells a
/// process that vanished (no /proc/PID any more) from one we may not read (EACCES).
/// </summary>
internal static class ProcFs
{
    public static bool Exists(int pid) => pid > 0 && Directory.Exists($"/proc/{pid}");

    public static string Read(int pid, string file)
    {
        string path = $"/proc/{pid}/{file}";
        try
        {
            return File.ReadAllText(path);
        }
        catch (UnauthorizedAccessException)
        {
            throw new HostKernelException(HostErrorKind.PermissionDenied, $"cannot read {path}: permission denied", pid, Interop.Libc.EACCES);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException || (e is IOException && !Exists(pid)))
        {
            throw new HostKernelException(Exists(pid) ? HostErrorKind.Io : HostErrorKind.Vanished,
                Exists(pid) ? $"cannot read {path}: {e.Message}" : "the process exited", pid, Interop.Libc.ESRCH);
        }
    }

    /// <summary>Fields of /proc/PID/stat after the comm, which may itself hold spaces and ')'.</summary>
    public static string[] StatFieldsAfterComm(string stat)
    {
        int close = stat.LastIndexOf(')');
        return stat[(close + 2)..].TrimEnd('\n').Split(' ');
    }

    /// <summary>State letter of a task (R, S, D, T, t, Z, X ...), or '\0' when it is gone.</summary>
    public static char State(int pid, int tid)
    {
        try
        {
            var s = File.ReadAllText($"/proc/{pid}/task/{tid}/stat");
            int close = s.LastIndexOf(')');
            return s[close + 2];
        }
        catch (IOException) { return '\0'; }
        catch (UnauthorizedAccessException) { return '\0'; }
    }

    public static List<int> Threads(int pid)
    {
        var list = new List<int>();
        try
        {
            foreach (var d in Directory.EnumerateDirectories($"/proc/{pid}/task"))
                if (int.TryParse(Path.GetFileName(d), NumberStyles.None, CultureInfo.InvariantCulture, out int tid))
                    list.Add(tid);
        }
        catch (DirectoryNotFoundException) { }
        list.Sort();
        return list;
    }

    /// <summary>
    /// The thread groups of the tree rooted at <paramref name="root"/>, root first, then each
    /// task's children in pid order (depth first), as CRIU's pstree collection orders them. Uses
    /// /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN), else the ppid of every /proc/PID/stat.
    /// </summary>
    public static List<(int Pid, int Ppid)> Tree(int root)
    {
        var result = new List<(int, int)>();
        Dictionary<int, List<int>>? byParent = null;
        var stack = new Stack<(int Pid, int Ppid)>();
        stack.Push((root, Ppid(root)));
        var seen = new HashSet<int>();
        while (stack.Count > 0)
        {
            var (pid, ppid) = stack.Pop();
            if (!seen.Add(pid))
                continue;
            result.Add((pid, ppid));
            var kids = new List<int>();
            bool haveChildrenFile = false;
            foreach (int tid in Threads(pid))
            {
                string path = $"/proc/{pid}/task/{tid}/children";
                if (!File.Exists(path))
                    continue;
                haveChildrenFile = true;
                try
                {
                    foreach (var w in File.ReadAllText(path).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                        kids.Add(int.Parse(w, CultureInfo.InvariantCulture));
                }
                catch (IOException) { }
            }
            if (!haveChildrenFile)
            {
                byParent ??= AllByParent();
                if (byParent.TryGetValue(pid, out var k))
                    kids.AddRange(k);
            }
            kids.Sort();
            for (int i = kids.Count - 1; i >= 0; i--)
                stack.Push((kids[i], pid));
        }
        return result;
    }

    public static int Ppid(int pid) =>
        int.Parse(StatFieldsAfterComm(Read(pid, "stat"))[1], CultureInfo.InvariantCulture);

    private static Dictionary<int, List<int>> AllByParent()
    {
        var map = new Dictionary<int, List<int>>();
        foreach (var d in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(d), NumberStyles.None, CultureInfo.InvariantCulture, out int pid))
                continue;
            try
            {
                int ppid = Ppid(pid);
                if (!map.TryGetValue(ppid, out var l))
                    map[ppid] = l = [];
                l.Add(pid);
            }
            catch (HostKernelException) { }
        }
        return map;
    }

    /// <summary>Start time of a process in ns since boot (stat field 22, in clock ticks).</summary>
    public static ulong StartTimeNs(int pid)
    {
        var f = StatFieldsAfterComm(Read(pid, "stat"));
        ulong ticks = ulong.Parse(f[19], CultureInfo.InvariantCulture);
        return ticks * (1_000_000_000UL / ClockTicks);
    }

    /// <summary>sysconf(_SC_CLK_TCK): 100 on every Linux ABI .NET runs on.</summary>
    public const ulong ClockTicks = 100;

    public static ulong UptimeNs()
    {
        var s = File.ReadAllText("/proc/uptime").Split(' ')[0];
        return (ulong)(decimal.Parse(s, CultureInfo.InvariantCulture) * 1_000_000_000m);
    }

    public static uint Uid(int pid)
    {
        foreach (var line in Read(pid, "status").Split('\n'))
            if (line.StartsWith("Uid:", StringComparison.Ordinal))
                return uint.Parse(line.Split('\t', StringSplitOptions.RemoveEmptyEntries)[2], CultureInfo.InvariantCulture); // effective
        return 0;
    }
}

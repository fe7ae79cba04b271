using CriuSharp.Dumper;
using CriuSharp.Dumper.Proc;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Cli;

/// <summary>
/// The oracle the fuzzers share: what a process tree looked like (registers, state, every mapping
/// and its bytes) and whether a restored tree is the same, plus small deterministic workloads.
/// </summary>
public static class FuzzSupport
{
    public sealed record TaskImage(int Pid, string Comm, ulong[] Registers, byte[] Extra, List<(ulong Start, ulong End, string Perms, byte[] Bytes)> Vmas);

    public static Kernel NewKernel(string arch = "x86_64", long memory = 256L << 20) => new(new KernelConfig
    {
        Arch = ArchProfile.Parse(arch),
        Version = KernelVersion.Parse("modern"),
        MemoryBytes = memory,
        SwapBytes = 64L << 20,
    });

    /// <summary>Spawns a workload given as JSON text (the same schema as samples/*.json).</summary>
    public static int Spawn(Kernel k, string json, string name = "fuzz.json") =>
        WorkloadApi.Spawn(k, WorkloadSpec.Parse(k, name, System.Text.Encoding.UTF8.GetBytes(json)))[0].Pid;

    /// <summary>A writer with a hot set and a cold tail, about 64 pages of data: cheap to dump and restore thousands of times.</summary>
    public static string SmallWorkload(int seed, string size = "256KiB") => $$"""
        { "seed": {{seed}}, "processes": [ { "name": "fz", "mappings": [ { "name": "heap", "size": "{{size}}" } ],
          "behaviour": { "type": "hotcold", "mapping": "heap", "distribution": "zipf", "exponent": 1.1, "pages_per_second": 20000 } } ] }
        """;

    public static List<TaskImage> Snapshot(Kernel k, int root)
    {
        var list = new List<TaskImage>();
        foreach (var t in k.Tree(root))
        {
            var vmas = new List<(ulong, ulong, string, byte[])>();
            foreach (var v in SmapsParser.Parse(k.Proc.Maps(t.Pid)))
            {
                if (v.Name is "[vvar]" or "[vsyscall]") continue;
                var bytes = new byte[v.Length];
                k.Proc.ReadMemory(t.Pid, v.Start, bytes);
                vmas.Add((v.Start, v.End, $"{v.Prot}{(v.Shared ? 's' : 'p')}", bytes));
            }
            list.Add(new TaskImage(t.Pid, t.Comm, (ulong[])t.Registers.Clone(), t.ExtraState.ToArray(), vmas));
        }
        return list;
    }

    /// <summary>Null when <paramref name="k"/> holds the same tree, else the first difference.</summary>
    public static string? Compare(List<TaskImage> expected, Kernel k)
    {
        foreach (var e in expected)
        {
            var t = k.FindTask(e.Pid);
            if (t is null || !t.Alive) return $"pid {e.Pid} missing";
            if (t.Comm != e.Comm) return $"pid {e.Pid} comm {t.Comm} != {e.Comm}";
            if (!t.Registers.AsSpan().SequenceEqual(e.Registers)) return $"pid {e.Pid} registers differ";
            if (!t.ExtraState.AsSpan().SequenceEqual(e.Extra)) return $"pid {e.Pid} extra state differs";
            var maps = SmapsParser.Parse(k.Proc.Maps(e.Pid)).Where(v => v.Name is not "[vvar]" and not "[vsyscall]").ToList();
            if (maps.Count != e.Vmas.Count) return $"pid {e.Pid}: {maps.Count} VMAs, expected {e.Vmas.Count}";
            for (int i = 0; i < maps.Count; i++)
            {
                var (s, end, perms, bytes) = e.Vmas[i];
                var m = maps[i];
                if (m.Start != s || m.End != end || $"{m.Prot}{(m.Shared ? 's' : 'p')}" != perms)
                    return $"pid {e.Pid}: VMA 0x{m.Start:x}-0x{m.End:x} {m.Prot}, expected 0x{s:x}-0x{end:x} {perms}";
                var got = new byte[end - s];
                k.Proc.ReadMemory(e.Pid, s, got);
                if (!got.AsSpan().SequenceEqual(bytes))
                    return $"pid {e.Pid}: bytes differ at 0x{s + (ulong)got.AsSpan().CommonPrefixLength(bytes):x}";
            }
        }
        return null;
    }

    /// <summary>The workloads' own self-checks over the restored tree; null when all pass.</summary>
    public static string? SelfCheck(Kernel k, int root)
    {
        if (k.FindTask(root) is not { Alive: true })
            return $"pid {root} is gone";
        foreach (var t in k.Tree(root).Where(t => t.Alive && WorkloadApi.HasProgram(t)))
        {
            var r = WorkloadApi.Verify(t);
            if (!r.Ok) return $"self-check of {t.Pid} failed at 0x{r.FirstBadAddress:x}: {r.Detail}";
        }
        return null;
    }

    /// <summary>True for the failures a damaged image may legitimately produce (exit code 3 or 4, one line).</summary>
    public static string? CheckTypedError(Exception ex)
    {
        var (code, message, _) = CliApp.Classify(ex);
        if (code is not (ExitCode.BadImage or ExitCode.BadInput))
            return $"untyped {ex.GetType().Name} (exit {(int)code}): {ex.Message}\n{ex.StackTrace}";
        if (message.Length == 0 || message.Contains('\n'))
            return $"{ex.GetType().Name} message is not one line: {message}";
        return null;
    }
}

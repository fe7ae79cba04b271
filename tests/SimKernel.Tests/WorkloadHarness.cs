using System.Security.Cryptography;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.SimKernel.Tests;

/// <summary>
/// Helpers for the workload tests: finding the samples, running a machine the way the scheduler
/// does, hashing everything a process is, and a manual dump/restore through the public kernel API
/// (the way the Dumper will do it: pagemap + process_vm_readv out, mmap + process_vm_writev in).
/// </summary>
internal static class WorkloadHarness
{
    public static string SamplesDir { get; } = FindSamples();

    private static string FindSamples()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "samples", "uniform.json")))
                return Path.Combine(d.FullName, "samples");
        throw new DirectoryNotFoundException("samples/ not found above " + AppContext.BaseDirectory);
    }

    public static string Sample(string name) => Path.Combine(SamplesDir, name);

    public static Kernel NewKernel(KernelVersion? version = null) =>
        new(new KernelConfig { Version = version ?? KernelVersion.Modern });

    /// <summary>The machine's scheduler (<see cref="LiveHost"/>) with a chosen quantum.</summary>
    public static void RunTime(Kernel k, ulong ns, ulong quantumNs) => new LiveHost(k, quantumNs).Advance(ns);

    /// <summary>A digest of every live task: registers, extra state, VMAs and every byte it can read.</summary>
    public static string Hash(Kernel k)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var page = new byte[k.Arch.PageSize];
        foreach (var t in k.Tasks.Where(t => t.Alive).OrderBy(t => t.Pid))
        {
            h.AppendData(BitConverter.GetBytes(t.Pid));
            foreach (ulong r in t.Registers)
                h.AppendData(BitConverter.GetBytes(r));
            h.AppendData(t.ExtraState);
            var reader = new PageChecker(t);
            foreach (var v in t.Mm.Vmas)
            {
                h.AppendData(BitConverter.GetBytes(v.Start));
                h.AppendData(BitConverter.GetBytes(v.End));
                h.AppendData(BitConverter.GetBytes((int)v.Protection | (v.IsShared ? 8 : 0)));
                if (v.SpecialName is not null)
                    continue;
                for (ulong va = v.Start; va < v.End; va += (ulong)page.Length)
                {
                    reader.ReadPage(va, page);
                    h.AppendData(page);
                }
            }
        }
        return Convert.ToHexString(h.GetHashAndReset());
    }

    /// <summary>
    /// Copies a machine as a checkpoint/restore would: files, then every live task with its pid,
    /// parent, VMAs (shared anonymous memory shared again through map_files), the contents of every
    /// page the pagemap shows present or swapped, registers, extra state and mm layout fields.
    /// The source may be changed (reading swapped pages swaps them in); it is discarded afterwards.
    /// </summary>
    public static Kernel DumpRestore(Kernel src)
    {
        var dst = new Kernel(src.Config);
        dst.AdvanceClock(src.UptimeNs);
        foreach (var f in src.Fs.Files.Where(f => !f.IsShmem && !f.Path.StartsWith("/usr/bin/", StringComparison.Ordinal)).ToList())
        {
            var bytes = new byte[f.Size];
            src.Fs.Read(f, 0, bytes);
            dst.Fs.Create(f.Path, bytes);
        }
        int ps = src.Arch.PageSize;
        var shm = new Dictionary<SimFile, (int Pid, ulong Va, long PgOff)>();
        var buf = new byte[ps];
        // Leaders first: a thread is cloned into its restored leader, sharing its memory.
        foreach (var t in src.Tasks.Where(t => t.Alive).OrderBy(t => t.IsThread ? 1 : 0).ThenBy(t => t.Pid).ToList())
        {
            if (t.IsThread)
            {
                var th = dst.CloneThread(dst.GetTask(t.Tgid), t.Pid);
                t.Registers.CopyTo(th.Registers, 0);
                th.ExtraState = t.ExtraState.ToArray();
                continue;
            }
            var nt = dst.Spawn(t.Comm, t.Pid, t.Ppid);
            foreach (var v in nt.Mm.Vmas.Where(v => v.SpecialName is null).ToList())
                nt.Munmap(v.Start, v.Length).OrThrow("munmap exec layout");
            foreach (var v in t.Mm.Vmas.ToList())
            {
                if (v.SpecialName is not null)
                    continue;
                var flags = MapFlags.Fixed | (v.IsShared ? MapFlags.Shared : MapFlags.Private);
                if ((v.Flags & VmaFlags.GrowsDown) != 0)
                    flags |= MapFlags.GrowsDown;
                SimFile? file = null;
                long off = 0;
                bool firstShm = false;
                if (v.File is { IsShmem: true } sf)
                {
                    if (shm.TryGetValue(sf, out var at))
                    {
                        dst.GetTask(at.Pid).OpenMapFile(at.Va, out file).OrThrow("map_files");
                        off = (v.PgOff - at.PgOff) * ps;
                    }
                    else
                    {
                        flags |= MapFlags.Anonymous;
                        firstShm = true;
                    }
                }
                else if (v.File is { } ff)
                {
                    file = dst.Fs.Lookup(ff.Path);
                    off = v.PgOff * ps;
                }
                else
                    flags |= MapFlags.Anonymous;
                nt.Mmap(v.Start, v.Length, v.Protection, flags, file, off).OrThrow("restore mmap");
                if (firstShm)
                    shm[v.File!] = (nt.Pid, v.Start, v.PgOff);
                if ((v.Flags & VmaFlags.HugePage) != 0)
                    nt.Madvise(v.Start, v.Length, Madvise.HugePage).OrThrow("madvise");
                bool fileShared = v.IsShared && v.IsFileBacked;
                int pages = (int)(v.Length / (ulong)ps);
                var pm = src.Proc.ReadPagemap(t.Pid, v.Start, pages);
                for (int i = 0; i < pages; i++)
                {
                    ulong e = pm[i];
                    if ((e & (PagemapBits.Present | PagemapBits.Swap)) == 0 || fileShared)
                        continue;
                    if (v.IsFileBacked && (e & PagemapBits.File) != 0)
                        continue; // an unmodified page-cache page: the file has it
                    ulong va = v.Start + (ulong)i * (ulong)ps;
                    src.Proc.ReadMemory(t.Pid, va, buf).OrThrow("dump read");
                    dst.Proc.WriteMemory(nt.Pid, va, buf).OrThrow("restore write");
                }
            }
            var mm = t.Mm;
            foreach (var (field, value) in new[]
            {
                (PrctlMmField.StartCode, mm.StartCode), (PrctlMmField.EndCode, mm.EndCode),
                (PrctlMmField.StartData, mm.StartData), (PrctlMmField.EndData, mm.EndData),
                (PrctlMmField.StartBrk, mm.StartBrk), (PrctlMmField.Brk, mm.Brk),
                (PrctlMmField.StartStack, mm.StartStack), (PrctlMmField.ArgStart, mm.ArgStart),
                (PrctlMmField.ArgEnd, mm.ArgEnd), (PrctlMmField.EnvStart, mm.EnvStart), (PrctlMmField.EnvEnd, mm.EnvEnd),
            })
                nt.PrctlSetMm(field, value).OrThrow("prctl");
            t.Registers.CopyTo(nt.Registers, 0);
            nt.ExtraState = t.ExtraState.ToArray();
        }
        return dst;
    }

    /// <summary>The workload's own mappings (regions with a length) of a task.</summary>
    public static IEnumerable<(string Name, ulong Base, ulong Length)> Regions(SimTask t)
    {
        var prog = WorkloadApi.Program(t);
        for (int i = 0; i < prog.Regions.Count; i++)
            if (t.Registers[Regs.RegionLength + i] != 0)
                yield return (prog.Regions[i].Name, t.Registers[Regs.RegionBase + i], t.Registers[Regs.RegionLength + i]);
    }
}

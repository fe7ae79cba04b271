using System.Buffers;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;

namespace CriuSharp.SimKernel.Workloads;

/// <summary>
/// An explicit list of operations, one per step; the program counter is the index of the next
/// one. Region addresses and lengths live in registers (mmap and mremap update them). A failed
/// system call or a pagemap expectation the kernel disagrees with halts the script and records
/// the step and what was seen; <see cref="WorkloadApi.Verify"/> turns that into a message.
/// A forked child runs nothing further: it holds its copy-on-write view of memory.
/// </summary>
internal static class Script
{
    private const ulong KindExpect = 1, KindSyscall = 2;

    public static long Run(SimTask task, ProgramImage prog, long n, bool countOwed)
    {
        var r = task.Registers;
        long done = 0;
        for (; done < n && task.State == TaskState.Running; done++)
        {
            ulong pc = r[Regs.Pc];
            if (r[Regs.Role] == 0 && r[Regs.Failure] == 0 && pc < (ulong)prog.Ops.Count)
            {
                Step(task, prog, prog.Ops[(int)pc], pc);
                if (!task.Alive)
                    break;
            }
            r[Regs.Pc] = pc + 1;
            if (countOwed)
                r[Regs.Owed]--;
        }
        return done;
    }

    private static void Fail(ulong[] r, ulong pc, ulong kind, ulong detail)
    {
        r[Regs.Failure] = pc + 1;
        r[Regs.Aux1] = kind;
        r[Regs.FailureDetail] = detail;
    }

    private static void Step(SimTask task, ProgramImage prog, ScriptOp op, ulong pc)
    {
        var r = task.Registers;
        var k = task.Kernel;
        ulong ps = (ulong)k.Arch.PageSize;
        int reg = op.Region;
        ulong b = reg >= 0 ? r[Regs.RegionBase + reg] : 0;
        ulong len = reg >= 0 ? r[Regs.RegionLength + reg] : 0;
        ulong va = b + op.Offset;
        ulong span = op.Length != 0 ? op.Length : len > op.Offset ? len - op.Offset : ps;
        SysResult res = SysResult.Success();
        switch (op.Op)
        {
            case "mmap":
            {
                var region = prog.Regions[reg];
                string path = System.Text.Encoding.UTF8.GetString(op.Bytes ?? []);
                bool shared = (op.Delta & 1) != 0;
                SimFile? file = null;
                if (path.Length > 0)
                    file = k.Fs.Lookup(path) ?? k.Fs.Create(path, new byte[op.Length]);
                var flags = (shared ? MapFlags.Shared : MapFlags.Private) | (file is null ? MapFlags.Anonymous : 0)
                            | ((op.Delta & 2) != 0 ? MapFlags.Populate : 0);
                ulong addr = op.SameAddress ? b : op.NewSize;
                if (addr != 0)
                    flags |= MapFlags.Fixed;
                res = task.Mmap(addr, op.Length, (Prot)op.Prot, flags, file);
                if (res.Ok)
                {
                    r[Regs.RegionBase + reg] = (ulong)res.Value;
                    r[Regs.RegionLength + reg] = op.Length;
                    if (op.Advice != 0)
                        res = task.Madvise((ulong)res.Value, op.Length, op.Advice == 1 ? Madvise.HugePage : Madvise.NoHugePage);
                }
                _ = region;
                break;
            }
            case "munmap":
                res = task.Munmap(va, span);
                if (res.Ok && op.Offset == 0 && span >= len)
                    r[Regs.RegionLength + reg] = 0; // the base stays: "same_address" maps it again there
                break;
            case "mremap":
            {
                ulong newLen = op.NewSize != 0 ? op.NewSize : len;
                var flags = op.Delta != 0 ? MremapFlags.MayMove : MremapFlags.None;
                ulong to = 0;
                if (op.ToRegion >= 0)
                {
                    flags |= MremapFlags.Fixed;
                    to = r[Regs.RegionBase + op.ToRegion];
                }
                res = task.Mremap(b, len, newLen, flags, to);
                if (res.Ok)
                {
                    r[Regs.RegionBase + reg] = (ulong)res.Value;
                    r[Regs.RegionLength + reg] = newLen;
                    if (op.ToRegion >= 0)
                        r[Regs.RegionLength + op.ToRegion] = 0; // replaced by the move
                }
                break;
            }
            case "mprotect":
                res = task.Mprotect(va, span, (Prot)op.Prot);
                break;
            case "madvise":
            case "swap_out":
                res = task.Madvise(va, span, (Madvise)op.Advice);
                break;
            case "brk":
            {
                ulong cur = task.Mm.Brk;
                ulong want = (ulong)((long)cur + op.Delta);
                if (task.Brk(want) != want)
                    res = Errno.ENOMEM;
                break;
            }
            case "read":
            {
                byte[] buf = ArrayPool<byte>.Shared.Rent((int)op.Length);
                res = task.Read(va, buf.AsSpan(0, (int)op.Length));
                ArrayPool<byte>.Shared.Return(buf);
                break;
            }
            case "write":
                res = task.Write(va, op.Bytes);
                break;
            case "fork":
            {
                var child = k.Fork(task);
                child.ExtraState = task.ExtraState;
                child.Registers[Regs.Role] = ++r[Regs.Aux0];
                child.Registers[Regs.Pc] = pc + 1;
                break;
            }
            case "clear_refs":
                res = k.Proc.ClearRefs(task.Pid, op.ClearRefs ?? "4");
                break;
            case "expect_pagemap":
            {
                ulong entry = ReadEntry(task, op, va & ~(ps - 1), out string? error);
                if (error is not null)
                {
                    Fail(r, pc, KindSyscall, (ulong)Errno.ENOENT);
                    return;
                }
                if ((entry & op.ExpectMask) != op.ExpectValue)
                    Fail(r, pc, KindExpect, entry);
                return;
            }
        }
        if (!res.Ok && task.Alive)
            Fail(r, pc, KindSyscall, (ulong)res.Error);
    }

    private static PagemapLayout Layout(SimTask task, ScriptOp op, out string? error)
    {
        error = null;
        var v = task.Kernel.Version;
        string file = op.PagemapFile ?? (v.HasPagemap2 ? "pagemap2" : "pagemap");
        if (file == "pagemap2")
        {
            if (!v.HasPagemap2)
                error = $"this kernel ({v.Name}) has no /proc/PID/pagemap2";
            return PagemapLayout.Pagemap2;
        }
        return v.PagemapLayout;
    }

    private static ulong ReadEntry(SimTask task, ScriptOp op, ulong va, out string? error)
    {
        var layout = Layout(task, op, out error);
        if (error is not null)
            return 0;
        Span<ulong> e = stackalloc ulong[1];
        task.Kernel.Proc.ReadPagemap(task.Pid, va, e, layout);
        return e[0];
    }

    /// <summary>The failure message for a halted script, or null when it has not failed.</summary>
    public static string? FailureText(SimTask task, ProgramImage prog)
    {
        var r = task.Registers;
        if (r[Regs.Failure] == 0)
            return null;
        int step = (int)r[Regs.Failure] - 1;
        var op = prog.Ops[step];
        string where = $"{prog.File}:{op.Line}: step {step} ({op.Op})";
        if (r[Regs.Aux1] == KindExpect)
        {
            ulong got = r[Regs.FailureDetail];
            string region = prog.Regions[op.Region].Name;
            ulong page = op.Offset / (ulong)task.Kernel.Arch.PageSize;
            var seen = new List<string>();
            foreach (var (name, bit) in new[] { ("soft_dirty", PagemapBits.SoftDirty), ("present", PagemapBits.Present), ("swapped", PagemapBits.Swap), ("exclusive", PagemapBits.Exclusive), ("file", PagemapBits.File), ("uffd_wp", PagemapBits.UffdWp) })
                if ((op.ExpectMask & bit) != 0)
                    seen.Add($"{name}={((got & bit) != 0 ? 1 : 0)}");
            string file = Layout(task, op, out _) == PagemapLayout.Pagemap2 ? "pagemap2" : "pagemap";
            return $"{where}: page {page} of '{region}': expected {op.Text}, the kernel ({task.Kernel.Version.Name}) reports {string.Join(" ", seen)} (raw {file} entry 0x{got:x16})";
        }
        var errno = (Errno)(long)r[Regs.FailureDetail];
        return op.Op == "expect_pagemap"
            ? $"{where}: {PagemapError(task, op)}"
            : $"{where}: the system call failed with {errno}";
    }

    private static string PagemapError(SimTask task, ScriptOp op)
    {
        Layout(task, op, out string? e);
        return e ?? "the pagemap could not be read";
    }

    public static VerifyReport Verify(SimTask task, ProgramImage prog)
    {
        string? failure = FailureText(task, prog);
        ulong? bad = null;
        if (failure is not null)
        {
            var op = prog.Ops[(int)task.Registers[Regs.Failure] - 1];
            if (op.Region >= 0)
                bad = (task.Registers[Regs.RegionBase + op.Region] + op.Offset) & ~((ulong)task.Kernel.Arch.PageSize - 1);
        }
        return new VerifyReport(task.Pid, "script", failure is null, Math.Min((long)task.Registers[Regs.Pc], prog.Ops.Count), bad, failure);
    }
}

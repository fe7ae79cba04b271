using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Uffd;

namespace CriuSharp.SimKernel;

public sealed partial class Kernel
{
    /// <summary>Writes everything but page and swap contents.</summary>
    internal void SaveState(BinaryWriter w)
    {
        w.Write(Arch.Name);
        w.Write(Version.Name);
        w.Write(Config.MemoryBytes);
        w.Write(Config.SwapBytes);
        w.Write((int)Config.Thp);
        w.Write(Config.ThpUseZeroPage);
        w.Write(Config.HugePages);
        w.Write((int)ThpMode);
        w.Write(UptimeNs);
        w.Write(_nextPid);
        w.Write(_hugeZero);
        w.Write(_anonVmaIds);
        Memory.Save(w);
        Swap.Save(w);
        Hugetlb.Save(w);

        var ctx = new PersistContext(Hugetlb);
        foreach (var f in Fs.Files.OrderBy(f => f.Path, StringComparer.Ordinal))
            ctx.IdOf(f);
        foreach (var seg in Shm.Segments.OrderBy(s => s.Id))
            ctx.IdOf(seg.File);
        // Thread group leaders (and single-threaded processes) first: each owns an address space,
        // which the threads saved after them share.
        var live = _tasks.Values.OrderBy(t => t.IsThread ? 1 : 0).ThenBy(t => t.Pid).ToList();
        var leaders = live.Where(t => !t.IsThread).ToList();
        foreach (var t in leaders)
        {
            ctx.IdOf(t.Mm.ExeFile);
            foreach (var v in t.Mm.Vmas)
            {
                ctx.IdOf(v.File);
                ctx.IdOf(v.Uffd);
                ctx.IdOf(v.HugeResv);
            }
        }
        w.Write(ctx.Files.Count);
        foreach (var f in ctx.Files)
            f.Save(w, ctx);
        Fs.Save(w, ctx);
        Shm.Save(w, ctx);
        w.Write(ctx.Resvs.Count);
        foreach (var resv in ctx.Resvs)
            resv.Save(w, ctx);
        w.Write(ctx.Uffds.Count);
        foreach (var u in ctx.Uffds)
        {
            int owner = leaders.FirstOrDefault(t => ReferenceEquals(t.Mm, u.Owner))?.Pid ?? 0;
            w.Write(owner);
            u.Save(w);
        }
        w.Write(live.Count);
        foreach (var t in live)
            t.Save(w, ctx);
        // Address spaces after every task header: the loader binds uffd contexts to them in between.
        foreach (var t in leaders)
            t.Mm.Save(w, ctx);
    }

    internal static Kernel LoadState(BinaryReader r)
    {
        var config = new KernelConfig
        {
            Arch = ArchProfile.Parse(r.ReadString()),
            Version = KernelVersion.Parse(r.ReadString()),
            MemoryBytes = r.ReadInt64(),
            SwapBytes = r.ReadInt64(),
            Thp = (ThpMode)r.ReadInt32(),
            ThpUseZeroPage = r.ReadBoolean(),
            HugePages = r.ReadInt64(),
        };
        var k = new Kernel(config, boot: false) { ThpMode = (ThpMode)r.ReadInt32() };
        k.UptimeNs = r.ReadUInt64();
        k._nextPid = r.ReadInt32();
        k._hugeZero = r.ReadInt64();
        k._anonVmaIds = r.ReadUInt64();
        k.Memory.Load(r);
        k.Swap.Load(r);
        k.Hugetlb.Load(r);

        var ctx = new PersistContext(k.Hugetlb);
        int files = r.ReadInt32();
        for (int i = 0; i < files; i++)
        {
            var f = SimFile.Load(r, ctx);
            ctx.FileIds[f] = i;
            ctx.Files.Add(f);
        }
        k.Fs.Load(r, ctx);
        k.Shm.Load(r, ctx);
        int resvs = r.ReadInt32();
        for (int i = 0; i < resvs; i++)
            ctx.Resvs.Add(HugetlbReservation.Load(r, ctx));
        int uffds = r.ReadInt32();
        var owners = new int[uffds];
        // Contexts reference their owner's mm, which is created with the task below: read their
        // state now and bind them once the owners exist.
        var pending = new List<(int Owner, bool ApiDone, ulong Features, long Faults, List<UffdMessage> Msgs)>();
        for (int i = 0; i < uffds; i++)
        {
            owners[i] = r.ReadInt32();
            var probe = Userfaultfd.Load(r, null!);
            pending.Add((owners[i], probe.ApiDone, probe.Features, probe.WriteFaults, probe.PendingMessages.ToList()));
        }
        int tasks = r.ReadInt32();
        var mms = new Dictionary<int, MmStruct>();
        // Create the address spaces first so uffd contexts can bind to them before VMAs reference them.
        var leaders = new List<SimTask>();
        for (int i = 0; i < tasks; i++)
        {
            var t = SimTask.LoadHeader(k, r, mms);
            if (t.IsThread)
                k._tasks[t.Pid] = t;
            else
            {
                mms[t.Pid] = t.Mm;
                leaders.Add(t);
            }
        }
        for (int i = 0; i < uffds; i++)
        {
            var p = pending[i];
            var owner = mms.GetValueOrDefault(p.Owner) ?? new MmStruct(k);
            ctx.Uffds.Add(Userfaultfd.Restore(owner, p.ApiDone, p.Features, p.Faults, p.Msgs));
        }
        foreach (var t in leaders)
        {
            t.Mm.Load(r, ctx);
            k._tasks[t.Pid] = t;
        }
        return k;
    }
}

public sealed partial class SimTask
{
    internal void Save(BinaryWriter w, PersistContext ctx)
    {
        w.Write(Pid); w.Write(Ppid); w.Write(Pgid); w.Write(Sid);
        w.Write(Comm);
        w.Write((int)State);
        w.Write(StartTimeNs);
        w.Write(ExitCode); w.Write(TermSignal); w.Write(FaultAddress);
        w.WriteArray<ulong>(Registers);
        w.WriteArray<byte>(ExtraState);
        w.Write(Tgid);
        w.Write(MinFlt); w.Write(MajFlt); w.Write(WpFlt);
    }

    /// <summary>
    /// Everything of a task but its address space contents (read after all tasks exist). A thread
    /// shares the address space of its group leader, which <paramref name="leaderMms"/> already
    /// holds since leaders are saved first.
    /// </summary>
    internal static SimTask LoadHeader(Kernel k, BinaryReader r, IReadOnlyDictionary<int, MmStruct> leaderMms)
    {
        int pid = r.ReadInt32(), ppid = r.ReadInt32(), pgid = r.ReadInt32(), sid = r.ReadInt32();
        string comm = r.ReadString();
        var state = (TaskState)r.ReadInt32();
        ulong start = r.ReadUInt64();
        int exitCode = r.ReadInt32(), termSignal = r.ReadInt32();
        ulong faultAddress = r.ReadUInt64();
        var regs = r.ReadArray<ulong>(RegisterCount);
        var extra = r.ReadArray<byte>();
        int tgid = r.ReadInt32();
        MmStruct mm;
        if (tgid == pid)
            mm = new MmStruct(k);
        else if (!leaderMms.TryGetValue(tgid, out mm!))
            throw new InvalidDataException($"thread {pid} names leader {tgid}, which the state does not hold");
        var t = new SimTask(k, pid, comm, mm, start)
        {
            Ppid = ppid, Pgid = pgid, Sid = sid, State = state,
            ExitCode = exitCode, TermSignal = termSignal, Tgid = tgid,
        };
        t.FaultAddress = faultAddress;
        regs.CopyTo(t.Registers, 0);
        t.ExtraState = extra;
        t.MinFlt = r.ReadInt64(); t.MajFlt = r.ReadInt64(); t.WpFlt = r.ReadInt64();
        return t;
    }
}

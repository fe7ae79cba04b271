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
        // The saved format has one address space per task and no hugetlb pools: refuse rather
        // than write a machine that would load different from what it was.
        if (_tasks.Values.Any(t => t.IsThread))
            throw new KernelException(Errno.EOPNOTSUPP, "saving a machine whose processes have threads is not supported");
        if (Hugetlb.Pools.Any(p => p.Nr + p.Surplus > 0) || Shm.Segments.Any())
            throw new KernelException(Errno.EOPNOTSUPP, "saving a machine with hugetlb pages or SysV shared memory is not supported");
        w.Write(Arch.Name);
        w.Write(Version.Name);
        w.Write(Config.MemoryBytes);
        w.Write(Config.SwapBytes);
        w.Write((int)Config.Thp);
        w.Write(Config.ThpUseZeroPage);
        w.Write((int)ThpMode);
        w.Write(UptimeNs);
        w.Write(_nextPid);
        w.Write(_hugeZero);
        w.Write(_anonVmaIds);
        Memory.Save(w);
        Swap.Save(w);

        var ctx = new PersistContext();
        foreach (var f in Fs.Files.OrderBy(f => f.Path, StringComparer.Ordinal))
            ctx.IdOf(f);
        var live = _tasks.Values.ToList();
        foreach (var t in live)
        {
            ctx.IdOf(t.Mm.ExeFile);
            foreach (var v in t.Mm.Vmas)
            {
                ctx.IdOf(v.File);
                ctx.IdOf(v.Uffd);
            }
        }
        w.Write(ctx.Files.Count);
        foreach (var f in ctx.Files)
            f.Save(w);
        Fs.Save(w, ctx);
        w.Write(ctx.Uffds.Count);
        foreach (var u in ctx.Uffds)
        {
            int owner = live.FirstOrDefault(t => ReferenceEquals(t.Mm, u.Owner))?.Pid ?? 0;
            w.Write(owner);
            u.Save(w);
        }
        w.Write(live.Count);
        foreach (var t in live)
            t.Save(w, ctx);
        // Address spaces after every task header: the loader binds uffd contexts to them in between.
        foreach (var t in live)
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
        };
        var k = new Kernel(config) { ThpMode = (ThpMode)r.ReadInt32() };
        k.UptimeNs = r.ReadUInt64();
        k._nextPid = r.ReadInt32();
        k._hugeZero = r.ReadInt64();
        k._anonVmaIds = r.ReadUInt64();
        k.Memory.Load(r);
        k.Swap.Load(r);

        var ctx = new PersistContext();
        int files = r.ReadInt32();
        for (int i = 0; i < files; i++)
        {
            var f = SimFile.Load(r);
            ctx.FileIds[f] = i;
            ctx.Files.Add(f);
        }
        k.Fs.Load(r, ctx);
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
        var created = new List<SimTask>();
        for (int i = 0; i < tasks; i++)
            created.Add(SimTask.LoadHeader(k, r));
        foreach (var t in created)
            mms[t.Pid] = t.Mm;
        for (int i = 0; i < uffds; i++)
        {
            var p = pending[i];
            var owner = mms.GetValueOrDefault(p.Owner) ?? new MmStruct(k);
            ctx.Uffds.Add(Userfaultfd.Restore(owner, p.ApiDone, p.Features, p.Faults, p.Msgs));
        }
        foreach (var t in created)
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
    }

    /// <summary>Everything of a task but its address space contents (read after all tasks exist).</summary>
    internal static SimTask LoadHeader(Kernel k, BinaryReader r)
    {
        int pid = r.ReadInt32(), ppid = r.ReadInt32(), pgid = r.ReadInt32(), sid = r.ReadInt32();
        string comm = r.ReadString();
        var state = (TaskState)r.ReadInt32();
        ulong start = r.ReadUInt64();
        var t = new SimTask(k, pid, comm, new MmStruct(k), start)
        {
            Ppid = ppid, Pgid = pgid, Sid = sid, State = state,
            ExitCode = r.ReadInt32(), TermSignal = r.ReadInt32(),
        };
        t.FaultAddress = r.ReadUInt64();
        r.ReadArray<ulong>().CopyTo(t.Registers, 0);
        t.ExtraState = r.ReadArray<byte>();
        return t;
    }
}

using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;

namespace CriuSharp.SimKernel.Tests;

/// <summary>A kernel with one task, and short helpers for the tests.</summary>
internal sealed class Sim
{
    public Sim(ArchProfile? arch = null, KernelVersion? version = null, ThpMode thp = ThpMode.Madvise)
    {
        K = new Kernel(new KernelConfig { Arch = arch ?? ArchProfile.X86_64, Version = version ?? KernelVersion.Modern, Thp = thp });
        T = K.Spawn("t");
    }

    public Kernel K { get; }
    public SimTask T { get; }
    public ulong PS => (ulong)K.Arch.PageSize;

    public ulong Anon(ulong pages, Prot prot = Prot.Read | Prot.Write, MapFlags extra = 0) =>
        (ulong)T.Mmap(0, pages * PS, prot, MapFlags.Private | MapFlags.Anonymous | extra).OrThrow("mmap");

    public ulong SharedAnon(ulong pages) =>
        (ulong)T.Mmap(0, pages * PS, Prot.Read | Prot.Write, MapFlags.Shared | MapFlags.Anonymous).OrThrow("mmap");

    public void W(ulong va, byte v = 1) => T.Write(va, [v]).OrThrow("write");
    public byte R(ulong va) { var b = new byte[1]; T.Read(va, b).OrThrow("read"); return b[0]; }
    public ulong PM(ulong va) => K.Proc.ReadPagemap(T.Pid, va, 1)[0];
    public ulong PM(SimTask t, ulong va) => K.Proc.ReadPagemap(t.Pid, va, 1)[0];
    public bool SD(ulong va) => (PM(va) & PagemapBits.SoftDirty) != 0;
    public void Clear() => K.Proc.ClearRefs(T.Pid, "4").OrThrow("clear_refs");
    public SysResult Madv(ulong va, ulong pages, Madvise a) => T.Madvise(va, pages * PS, a);
}

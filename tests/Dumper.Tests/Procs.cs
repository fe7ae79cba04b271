using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.Dumper.Tests;

/// <summary>Builds processes with the SimKernel system calls, the way a workload would.</summary>
public static class Procs
{
    public static ulong Map(SimTask t, ulong pages, MapFlags extra = 0, Prot prot = Prot.Read | Prot.Write)
    {
        ulong len = pages * (ulong)t.Kernel.Arch.PageSize;
        var r = t.Mmap(0, len, prot, MapFlags.Private | MapFlags.Anonymous | extra);
        Assert.True(r.Ok, r.ToString());
        return (ulong)r.Value;
    }

    public static void Fill(SimTask t, ulong va, ulong pages, int seed)
    {
        int ps = t.Kernel.Arch.PageSize;
        var rnd = new Random(seed);
        var buf = new byte[ps];
        for (ulong p = 0; p < pages; p++)
        {
            rnd.NextBytes(buf);
            if (p % 5 == 3) Array.Clear(buf, 0, ps / 2);
            Assert.True(t.Write(va + p * (ulong)ps, buf).Ok);
        }
    }

    public static void Touch(SimTask t, ulong va, ulong value) => Assert.True(t.StoreU64(va, value));

    /// <summary>A process with most kinds of memory: anon, heap, private file with COW writes, THP, read-only zero pages, registers.</summary>
    public static SimTask Rich(Kernel k, int pid, int seed = 1)
    {
        var t = k.Spawn("rich", pid);
        int ps = k.Arch.PageSize;
        ulong a = Map(t, 64);
        Fill(t, a, 48, seed);
        var ro = new byte[8];
        t.Read(a + 60 * (ulong)ps, ro); // zero-page mapping, never written
        ulong brk0 = t.Brk(0);
        t.Brk(brk0 + 10UL * (ulong)ps + 123);
        Fill(t, (brk0 + (ulong)ps - 1) & ~((ulong)ps - 1), 5, seed + 1);
        var file = k.Fs.Lookup("/data/blob") ?? k.Fs.Create("/data/blob", Enumerable.Range(0, 8 * ps).Select(i => (byte)(i * 7)).ToArray());
        ulong fm = (ulong)t.Mmap(0, 8UL * (ulong)ps, Prot.Read | Prot.Write, MapFlags.Private, file, 0).Value;
        var tmp = new byte[16];
        t.Read(fm, tmp);                      // page cache page: not dumped
        Touch(t, fm + 2UL * (ulong)ps, 0xfeed);   // COWed: dumped
        ulong huge = Map(t, (ulong)(2 * k.Arch.PagesPerHuge));
        t.Madvise(huge, (ulong)(2 * k.Arch.PagesPerHuge * ps), Madvise.HugePage);
        Touch(t, huge + k.Arch.HugePageSize, 0x1234);
        for (int i = 0; i < t.Registers.Length; i++) t.Registers[i] = (ulong)(seed * 1000 + i);
        t.ExtraState = [1, 2, 3, (byte)seed];
        return t;
    }
}

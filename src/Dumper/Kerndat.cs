using System.Runtime.CompilerServices;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;

namespace CriuSharp.Dumper;

/// <summary>
/// Facts about the kernel that CRIU probes once and caches (criu/kerndat.c): here, the PFN of the
/// shared zero page, found as kerndat_get_zero_page_pfn does: map an anonymous page in a helper
/// process, read it (which maps the zero page), and read its pagemap entry. Only the pagemap
/// path needs it; PAGEMAP_SCAN reports PAGE_IS_PFNZERO itself. The helper costs one pid and an
/// executable file on the simulated host, as CRIU's own helper processes would.
/// </summary>
internal static class Kerndat
{
    private sealed class Box { public ulong ZeroPfn; }
    private static readonly ConditionalWeakTable<Kernel, Box> Cache = new();

    public static ulong ZeroPfn(Kernel kernel)
    {
        lock (Cache)
        {
            if (Cache.TryGetValue(kernel, out var box))
                return box.ZeroPfn;
            var probe = kernel.Spawn("criu-kerndat");
            try
            {
                var r = probe.Mmap(0, (ulong)kernel.Arch.PageSize, Prot.Read, MapFlags.Private | MapFlags.Anonymous);
                if (!r.Ok)
                    throw new DumperException($"kerndat: mmap failed ({r.Error})");
                ulong va = (ulong)r.Value;
                Span<byte> one = stackalloc byte[1];
                probe.Read(va, one);
                Span<ulong> pme = stackalloc ulong[1];
                var layout = kernel.Version.HasPagemap2 ? PagemapLayout.Pagemap2 : kernel.Version.PagemapLayout;
                kernel.Proc.ReadPagemap(probe.Pid, va, pme, layout);
                box = new Box { ZeroPfn = PagemapBits.IsPresent(pme[0]) ? PagemapBits.Pfn(pme[0]) : ulong.MaxValue };
                Cache.Add(kernel, box);
                return box.ZeroPfn;
            }
            finally
            {
                kernel.Exit(probe, 0);
                kernel.Reap(probe);
            }
        }
    }
}

using System.Collections.Concurrent;

namespace CriuSharp.Dumper;

/// <summary>
/// Facts about the kernel that CRIU probes once and caches (criu/kerndat.c, keyed by the boot id
/// as CRIU's /run/criu.kdat is): here, the PFN of the shared zero page, found as
/// kerndat_get_zero_page_pfn does: map an anonymous page in a helper process, read it (which maps
/// the zero page), and read its pagemap entry. Only the pagemap path needs it; PAGEMAP_SCAN
/// reports PAGE_IS_PFNZERO itself. The helper costs one pid and an executable file on a simulated
/// host, as CRIU's own helper processes would.
/// </summary>
internal static class Kerndat
{
    private static readonly ConcurrentDictionary<string, ulong> Cache = new();
    private static readonly object Probing = new();

    public static ulong ZeroPfn(IKernel kernel)
    {
        string boot = kernel.BootId;
        if (Cache.TryGetValue(boot, out ulong pfn))
            return pfn;
        lock (Probing)
        {
            if (Cache.TryGetValue(boot, out pfn))
                return pfn;
            int probe = kernel.Spawn("criu-kerndat");
            try
            {
                var r = kernel.Mmap(probe, 0, (ulong)kernel.Capabilities.PageSize, Prot.Read, MapFlags.Private | MapFlags.Anonymous, MapSource.Anonymous);
                if (!r.Ok)
                    throw new DumperException($"kerndat: mmap failed ({r.Error})");
                ulong va = (ulong)r.Value;
                Span<byte> one = stackalloc byte[1];
                kernel.ReadMemory(probe, va, one);
                Span<ulong> pme = stackalloc ulong[1];
                var caps = kernel.Capabilities;
                kernel.ReadPagemap(probe, va, pme, caps.HasPagemap2 ? PagemapLayout.Pagemap2 : caps.PagemapLayout);
                pfn = PagemapBits.IsPresent(pme[0]) ? PagemapBits.Pfn(pme[0]) : ulong.MaxValue;
                Cache[boot] = pfn;
                return pfn;
            }
            finally
            {
                kernel.Exit(probe, 0);
            }
        }
    }
}

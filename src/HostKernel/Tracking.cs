using System.Runtime.InteropServices;

namespace CriuSharp.HostKernel;

/// <summary>
/// What the running kernel can track, probed rather than read from its config (CRIU's
/// kerndat_get_dirty_track does the same): a kernel built without CONFIG_MEM_SOFT_DIRTY accepts
/// "4" in clear_refs and never sets pagemap bit 55, so only writing a page and reading its entry
/// back tells.
/// </summary>
public static unsafe class Tracking
{
    private static readonly Lazy<bool> SoftDirtyProbe = new(ProbeSoftDirty);
    private static readonly Lazy<bool> ScanProbe = new(ProbePagemapScan);

    /// <summary>Soft-dirty works: a page written after clear_refs 4 reads back with bit 55 set.</summary>
    public static bool SoftDirty => SoftDirtyProbe.Value;

    /// <summary>The PAGEMAP_SCAN ioctl exists (Linux 6.7).</summary>
    public static bool PagemapScan => ScanProbe.Value;

    private static bool ProbeSoftDirty()
    {
        // A private mapping of our own, so clear_refs on /proc/self is the only side effect
        // (it clears the soft-dirty bits of this process, which nothing else here uses).
        byte* page = (byte*)NativeMemory.AlignedAlloc(4096, 4096);
        try
        {
            page[0] = 1;
            if (!WriteClearRefs())
                return false;
            using var pm = new Pagemap(Environment.ProcessId);
            Span<ulong> e = stackalloc ulong[1];
            pm.Read((ulong)page, e);
            bool clearedOk = (e[0] & Pagemap.SoftDirty) == 0;
            page[0] = 2;
            pm.Read((ulong)page, e);
            return clearedOk && (e[0] & Pagemap.SoftDirty) != 0;
        }
        finally
        {
            NativeMemory.AlignedFree(page);
        }
    }

    private static bool WriteClearRefs()
    {
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "4");
            return true;
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    private static bool ProbePagemapScan()
    {
        using var pm = new Pagemap(Environment.ProcessId);
        Span<Pagemap.PageRegion> v = stackalloc Pagemap.PageRegion[1];
        byte* page = (byte*)NativeMemory.AlignedAlloc(4096, 4096);
        try
        {
            page[0] = 1;
            int n = pm.Scan((ulong)page, (ulong)page + 4096, 0, Pagemap.PageIsPresent, Pagemap.PageIsPresent, v, out _);
            return n == 1;
        }
        catch (HostKernelException) { return false; }
        finally
        {
            NativeMemory.AlignedFree(page);
        }
    }
}

using System.Globalization;
using System.Text;

namespace CriuSharp.SimKernel.Mm;

/// <summary>
/// One hstate of mm/hugetlb.c: the persistent pool of huge pages of one size, with the counters of
/// /sys/kernel/mm/hugepages/hugepages-&lt;size&gt;kB. Pages enter the pool when nr_hugepages grows
/// (allocated from physical memory then, not at fault), and leave it only when it shrinks and they
/// are free. A mapping reserves pages at mmap time (resv_hugepages), so that a later fault can
/// always be served; a fault with neither a reservation nor a free unreserved page gets SIGBUS.
///
///   nr_hugepages = free + in use          free = reserved-for-later + available
///   surplus: pages above nr_hugepages, allowed up to nr_overcommit_hugepages, freed when released
/// </summary>
public sealed partial class HugetlbPool
{
    private readonly PhysicalMemory _mem;
    private readonly Stack<long> _free = new();
    private readonly HashSet<long> _surplusHeads = [];

    internal HugetlbPool(PhysicalMemory mem, ulong size, int pageShift, int deviceMinor, bool allocatable)
    {
        _mem = mem;
        Size = size;
        PagesPerHuge = (int)(size >> pageShift);
        DeviceMinor = deviceMinor;
        Allocatable = allocatable;
    }

    /// <summary>Bytes of one huge page.</summary>
    public ulong Size { get; }
    public int PagesPerHuge { get; }
    /// <summary>log2 of the size: the value MAP_HUGE_SHIFT / SHM_HUGE_SHIFT / MFD_HUGE_SHIFT encode.</summary>
    public int SizeLog2 => System.Numerics.BitOperations.Log2(Size);
    public string SysfsName => "hugepages-" + (Size >> 10).ToString(CultureInfo.InvariantCulture) + "kB";
    internal int DeviceMinor { get; }
    /// <summary>
    /// Whether pages of this size can be put in the pool and mapped here. Only the PMD size is
    /// mapped by the simulated page tables; 1 GiB pages (PUD level on x86_64) are listed in sysfs
    /// but a write to their nr_hugepages allocates nothing, as when the kernel finds no contiguous
    /// gigantic range.
    /// </summary>
    internal bool Allocatable { get; }

    public long Nr { get; private set; }
    public long Free => _free.Count;
    public long Resv { get; internal set; }
    public long Surplus { get; private set; }
    public long Overcommit { get; internal set; }
    public long InUse => Nr + Surplus - Free;

    /// <summary>Free pages not promised to a reservation.</summary>
    public long Available => Free - Resv;

    /// <summary>echo N &gt; nr_hugepages: grows the pool from physical memory (as far as it goes) or frees free pages.</summary>
    public void SetNr(long want)
    {
        if (want < 0)
            want = 0;
        while (Nr < want && Allocatable)
        {
            long head = _mem.AllocateHuge();
            if (head < 0)
                break;
            MarkPool(head);
            _free.Push(head);
            Nr++;
        }
        // Shrinking frees only free, unreserved pages (set_max_huge_pages never takes reserved ones).
        while (Nr > want && Available > 0)
        {
            _mem.FreeHuge(_free.Pop());
            Nr--;
        }
    }

    private void MarkPool(long head)
    {
        for (long p = head; p < head + PagesPerHuge; p++)
            _mem.SetKind(p, PhysicalMemory.FrameKind.HugeTlb);
    }

    /// <summary>Reserves <paramref name="pages"/> for a mapping (hugetlb_acct_memory); false when the pool cannot promise them.</summary>
    internal bool Reserve(long pages)
    {
        if (pages <= 0)
            return true;
        while (Available < pages && Surplus < Overcommit && TryAddSurplus()) { }
        if (Available < pages)
            return false;
        Resv += pages;
        return true;
    }

    internal void Unreserve(long pages) => Resv -= pages;

    private bool TryAddSurplus()
    {
        if (!Allocatable)
            return false;
        long head = _mem.AllocateHuge();
        if (head < 0)
            return false;
        MarkPool(head);
        _surplusHeads.Add(head);
        _free.Push(head);
        Surplus++;
        return true;
    }

    /// <summary>
    /// Takes a zeroed page for a fault: against a reservation when <paramref name="reserved"/>,
    /// else from the available pages (or a surplus page). -1 when there is none (the fault's SIGBUS).
    /// </summary>
    internal long Take(bool reserved)
    {
        if (reserved)
            Resv--;
        else if (Available <= 0 && !(Surplus < Overcommit && TryAddSurplus()))
            return -1;
        long head = _free.Pop();
        for (long p = head; p < head + PagesPerHuge; p++)
            _mem.PageMut(p).Clear();
        return head;
    }

    /// <summary>A page nobody maps or holds any more goes back to the pool (a surplus page back to memory).</summary>
    internal void Put(long head)
    {
        if (_surplusHeads.Remove(head))
        {
            _mem.FreeHuge(head);
            Surplus--;
            return;
        }
        _free.Push(head);
    }
}

/// <summary>The reservation of a private hugetlb mapping: huge-page indexes (file offsets) promised at mmap and not yet faulted.</summary>
internal sealed partial class HugetlbReservation(HugetlbPool pool)
{
    public HugetlbPool Pool { get; } = pool;
    public HashSet<long> Indexes { get; } = [];

    /// <summary>Consumes the reservation of index <paramref name="idx"/> if there is one.</summary>
    public bool Consume(long idx) => Indexes.Remove(idx);

    /// <summary>Gives back the reservations of [from, to) (munmap of part of the mapping).</summary>
    public void Release(long from, long to)
    {
        for (long i = from; i < to; i++)
            if (Indexes.Remove(i))
                Pool.Unreserve(1);
    }
}

/// <summary>
/// The kernel's hstates (mm/hugetlb.c): one pool per supported size — the PMD size on every
/// architecture, plus 1 GiB (PUD) on x86_64 — and the /proc and /sys files that show and size them.
/// </summary>
public sealed partial class HugetlbState
{
    private readonly Kernel _k;
    private readonly List<HugetlbPool> _pools = [];

    internal HugetlbState(Kernel k, long initialPages)
    {
        _k = k;
        var arch = k.Arch;
        Default = new HugetlbPool(k.Memory, arch.HugePageSize, arch.PageShift, 0x13, allocatable: true);
        _pools.Add(Default);
        if (arch.Kind == Arch.ArchProfile.Family.X86_64)
            _pools.Add(new HugetlbPool(k.Memory, 1UL << 30, arch.PageShift, 0x14, allocatable: false));
        Default.SetNr(initialPages);
    }

    /// <summary>The default hstate (default_hugepagesz): the PMD size.</summary>
    public HugetlbPool Default { get; }
    public IReadOnlyList<HugetlbPool> Pools => _pools;

    /// <summary>MAP_HUGE_SHIFT, SHM_HUGE_SHIFT and MFD_HUGE_SHIFT: the log2 of the size sits at bit 26, 6 bits wide.</summary>
    public const int HugeShift = 26;
    public const int HugeMask = 0x3f;

    /// <summary>hstate_sizelog: 0 means the default size; an unknown size gives null (the callers' EINVAL).</summary>
    public HugetlbPool? BySizeLog(int log2) =>
        log2 == 0 ? Default : _pools.FirstOrDefault(p => p.SizeLog2 == log2);


    /// <summary>Reads one of the hugetlb files of /proc/sys/vm, /sys/kernel/mm/hugepages or the HugePages lines of /proc/meminfo.</summary>
    public SysResult Read(string path, out string text)
    {
        text = "";
        if (path == "/proc/sys/vm/nr_hugepages")
            return Line(Default.Nr + 0, out text);
        if (path == "/proc/sys/vm/nr_overcommit_hugepages")
            return Line(Default.Overcommit, out text);
        if (path == "/proc/meminfo")
        {
            text = Meminfo();
            return SysResult.Success(text.Length);
        }
        if (Sysfs(path) is not var (pool, file) || pool is null)
            return Errno.ENOENT;
        return file switch
        {
            "nr_hugepages" => Line(pool.Nr, out text),
            "free_hugepages" => Line(pool.Free, out text),
            "resv_hugepages" => Line(pool.Resv, out text),
            "surplus_hugepages" => Line(pool.Surplus, out text),
            "nr_overcommit_hugepages" => Line(pool.Overcommit, out text),
            _ => Errno.ENOENT,
        };
    }

    /// <summary>Writes nr_hugepages or nr_overcommit_hugepages (the other files are read-only: EACCES as for mode 0444).</summary>
    public SysResult Write(string path, string value)
    {
        HugetlbPool? pool;
        string file;
        if (path == "/proc/sys/vm/nr_hugepages") (pool, file) = (Default, "nr_hugepages");
        else if (path == "/proc/sys/vm/nr_overcommit_hugepages") (pool, file) = (Default, "nr_overcommit_hugepages");
        else if (Sysfs(path) is var (p, f) && p is not null) (pool, file) = (p, f);
        else return Errno.ENOENT;
        if (file is not ("nr_hugepages" or "nr_overcommit_hugepages"))
            return Errno.EACCES;
        if (!long.TryParse(value.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long n))
            return Errno.EINVAL;
        if (file == "nr_hugepages")
            pool.SetNr(n);
        else
            pool.Overcommit = n;
        return SysResult.Success(value.Length);
    }

    private (HugetlbPool?, string)? Sysfs(string path)
    {
        const string dir = "/sys/kernel/mm/hugepages/";
        if (!path.StartsWith(dir, StringComparison.Ordinal))
            return null;
        var rest = path[dir.Length..].Split('/');
        if (rest.Length != 2)
            return null;
        var pool = _pools.FirstOrDefault(p => p.SysfsName == rest[0]);
        return pool is null ? null : (pool, rest[1]);
    }

    private static SysResult Line(long v, out string text)
    {
        text = v.ToString(CultureInfo.InvariantCulture) + "\n";
        return SysResult.Success(text.Length);
    }

    /// <summary>The hugetlb lines of /proc/meminfo (hugetlb_report_meminfo), for the default size.</summary>
    public string Meminfo()
    {
        var d = Default;
        long total = _pools.Sum(p => (p.Nr + p.Surplus) * (long)(p.Size >> 10));
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"HugePages_Total: {d.Nr + d.Surplus,5}\n");
        sb.Append(CultureInfo.InvariantCulture, $"HugePages_Free:  {d.Free,5}\n");
        sb.Append(CultureInfo.InvariantCulture, $"HugePages_Rsvd:  {d.Resv,5}\n");
        sb.Append(CultureInfo.InvariantCulture, $"HugePages_Surp:  {d.Surplus,5}\n");
        sb.Append(CultureInfo.InvariantCulture, $"Hugepagesize:   {d.Size >> 10,8} kB\n");
        sb.Append(CultureInfo.InvariantCulture, $"Hugetlb:        {total,8} kB\n");
        return sb.ToString();
    }

    /// <summary>A new file on the internal hugetlbfs mount of <paramref name="pool"/>'s size (anonymous MAP_HUGETLB, memfd, SysV shm).</summary>
    internal SimFile CreateFile(HugetlbPool pool, string path, long size)
    {
        var f = _k.Fs.CreateHugetlbObject(path, pool);
        f.Size = size;
        f.Unlinked = true;
        return f;
    }

    /// <summary>Drops the pages and reservations of a hugetlbfs file nobody holds any more (evict of the inode).</summary>
    internal static void Evict(SimFile f)
    {
        var pool = f.Hugetlb!;
        pool.Unreserve(f.HugeReserved.Count);
        f.HugeReserved.Clear();
        foreach (var head in f.HugePages.Values)
            pool.Put(head);
        f.HugePages.Clear();
    }
}

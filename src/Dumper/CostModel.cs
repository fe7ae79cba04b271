namespace CriuSharp.Dumper;

/// <summary>
/// How long the work of a dump or restore takes in the simulated machine's <b>virtual</b> time.
/// Stats (freezing_time, frozen_time, memdump_time, memwrite_time, restore_time) and the time the
/// workloads get to run while a pre-dump writes its images come from here, never from the wall
/// clock, so runs are deterministic. Defaults are rough figures of a 2020s x86 server with an NVMe
/// disk; `migrate` takes measured ones as options. Wall-clock times of the real work are reported separately in
/// <see cref="DumpStats.WallClock"/>.
/// </summary>
public sealed record CostModel
{
    /// <summary>Seizing and freezing one task (cgroup freezer + ptrace seize): 150 µs.</summary>
    public ulong FreezeNsPerTask { get; init; } = 150_000;
    /// <summary>Parsing /proc/PID/smaps and the other per-task files: 80 µs per task.</summary>
    public ulong ProcParseNsPerTask { get; init; } = 80_000;
    /// <summary>Walking pagemap / PAGEMAP_SCAN: 2 ns per page walked (≈ the real kernel's pagemap read cost).</summary>
    public double ScanNsPerPage { get; init; } = 2.0;
    /// <summary>Copying pages into page pipes (vmsplice / process_vm_readv): 8 GB/s.</summary>
    public double CopyBytesPerSecond { get; init; } = 8e9;
    /// <summary>Compressing with LZ4 per core: 1.2 GB/s of input (zstd: a third of that).</summary>
    public double CompressBytesPerSecond { get; init; } = 1.2e9;
    /// <summary>Decompressing on restore: 3.5 GB/s of output.</summary>
    public double DecompressBytesPerSecond { get; init; } = 3.5e9;
    /// <summary>Writing or reading image files: 2 GB/s.</summary>
    public double DiskBytesPerSecond { get; init; } = 2e9;
    /// <summary>Resetting the tracker (clear_refs 4 or a PAGEMAP_SCAN re-arm): 0.5 ns per page.</summary>
    public double ResetNsPerPage { get; init; } = 0.5;
    /// <summary>Creating one task on restore (fork or spawn + munmap of the exec layout): 300 µs.</summary>
    public ulong ForkNsPerTask { get; init; } = 300_000;
    /// <summary>mmap/mprotect/madvise per VMA on restore: 5 µs.</summary>
    public ulong MmapNsPerVma { get; init; } = 5_000;
    /// <summary>Writing restored pages into memory: 6 GB/s.</summary>
    public double FillBytesPerSecond { get; init; } = 6e9;
    /// <summary>
    /// XBZRLE-style delta encoding of a re-dirtied page against its cached version, per byte of
    /// page read: 7 GB/s (bench DeltaBenchmarks: encoding 32 MiB of re-dirtied pages took 1.19 ×
    /// memcpy's 3.9 ms on the build machine).
    /// </summary>
    public double DeltaEncodeBytesPerSecond { get; init; } = 7e9;
    /// <summary>
    /// The link the images cross (128 MiB/s, QEMU's default max-bandwidth): what a byte not sent
    /// saves in time. Only deltas use it, to weigh the time they cost against the bytes they save;
    /// a migration sets its own link here.
    /// </summary>
    public double LinkBytesPerSecond { get; init; } = 128.0 * 1024 * 1024;

    public static CostModel Default { get; } = new();

    internal static ulong Ns(double bytes, double perSecond) => perSecond <= 0 ? 0 : (ulong)(bytes / perSecond * 1e9);
}

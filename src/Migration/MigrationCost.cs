using CriuSharp.Dumper;

namespace CriuSharp.Migration;

/// <summary>
/// The cost model of a migration in virtual time: the link between the hosts plus the figures the
/// Dumper's <see cref="CostModel"/> uses for freezing, copying and compressing. Defaults were
/// measured on the 2-core AMD EPYC build machine of this project (README "Cost model" says how);
/// the link is QEMU's default max-bandwidth. Every figure is an option of <c>migrate</c>.
/// </summary>
public sealed record MigrationCost
{
    /// <summary>Link bandwidth: 128 MiB/s, QEMU's default max-bandwidth (migration/options.c MAX_THROTTLE).</summary>
    public double LinkBytesPerSecond { get; init; } = 128.0 * 1024 * 1024;

    /// <summary>
    /// LZ4 compression per core: 525 MB/s, <c>lz4 -b1</c> (liblz4 1.9.4) on 64 MiB of shared
    /// libraries, ratio 1.92 — ordinary binary memory, not the workloads' stamped pages, which
    /// compress 100× at 6.9 GB/s and would flatter every figure. zstd is modelled by the Dumper at a
    /// third of this (measured here: <c>zstd -b3</c> 99 MB/s, a fifth).
    /// </summary>
    public double CompressBytesPerSecond { get; init; } = 525e6;

    /// <summary>LZ4 decompression on restore: 3.2 GB/s (same <c>lz4 -b1</c> run: 3188 MB/s).</summary>
    public double DecompressBytesPerSecond { get; init; } = 3.2e9;

    /// <summary>Copying pages out of the task (vmsplice / process_vm_readv stand-in): memcpy in 64 KiB chunks over 256 MiB, best of 5: 6.0 GB/s.</summary>
    public double CopyBytesPerSecond { get; init; } = 6.0e9;

    /// <summary>
    /// Seizing and freezing one task: 150 µs, the Dumper's default, not measured (the simulator's
    /// freezer costs nothing real to measure); CRIU's list reports ~2 s for a 14-process container
    /// dump as a whole, of which freezing is a small part.
    /// </summary>
    public ulong FreezeNsPerTask { get; init; } = 150_000;

    /// <summary>
    /// Round trip of one lazy-page request (post-copy): 100 µs, an assumption (a LAN round trip plus
    /// the two daemons' wake-ups), not a measurement; <c>migrate --rtt</c> sets it.
    /// </summary>
    public ulong RoundTripNs { get; init; } = 100_000;

    public static MigrationCost Default { get; } = new();

    /// <summary>The lazy-pages daemon's link model.</summary>
    public LazyLinkModel LazyLink() => new(RoundTripNs, LinkBytesPerSecond);

    /// <summary>The Dumper's cost model with this model's figures in place of its defaults.</summary>
    public CostModel ToDumperCost() => CostModel.Default with
    {
        CompressBytesPerSecond = CompressBytesPerSecond,
        DecompressBytesPerSecond = DecompressBytesPerSecond,
        CopyBytesPerSecond = CopyBytesPerSecond,
        FreezeNsPerTask = FreezeNsPerTask,
        LinkBytesPerSecond = LinkBytesPerSecond,
    };

    /// <summary>Time to send <paramref name="bytes"/> over the link.</summary>
    public ulong TransferNs(ulong bytes) => LinkBytesPerSecond <= 0 ? 0 : (ulong)(bytes / LinkBytesPerSecond * 1e9);
}

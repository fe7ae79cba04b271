namespace CriuSharp.Dumper.Migration;

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
    /// LZ4 compression speed per core: 1.0 GB/s, liblz4's LZ4_compress_default on 1 GiB of the
    /// sample memory in DumperBenchmarks (1.04 s for 1 GiB). zstd is modelled at a third of it by
    /// the Dumper.
    /// </summary>
    public double CompressBytesPerSecond { get; init; } = 1.0e9;

    /// <summary>LZ4 decompression on restore: 3.0 GB/s (LZ4_decompress_safe, 1 GiB in 359 ms, same benchmark).</summary>
    public double DecompressBytesPerSecond { get; init; } = 3.0e9;

    /// <summary>Copying pages out of the task (vmsplice / process_vm_readv stand-in): memcpy speed, 8 GB/s measured.</summary>
    public double CopyBytesPerSecond { get; init; } = 8.0e9;

    /// <summary>Seizing and freezing one task: 150 µs (CRIU's list reports ~170 ms per 14 tasks ≈ 12 ms each for whole dumps; the freeze alone is far less).</summary>
    public ulong FreezeNsPerTask { get; init; } = 150_000;

    public static MigrationCost Default { get; } = new();

    /// <summary>The Dumper's cost model with this model's figures in place of its defaults.</summary>
    public CostModel ToDumperCost() => CostModel.Default with
    {
        CompressBytesPerSecond = CompressBytesPerSecond,
        DecompressBytesPerSecond = DecompressBytesPerSecond,
        CopyBytesPerSecond = CopyBytesPerSecond,
        FreezeNsPerTask = FreezeNsPerTask,
    };

    /// <summary>Time to send <paramref name="bytes"/> over the link.</summary>
    public ulong TransferNs(ulong bytes) => LinkBytesPerSecond <= 0 ? 0 : (ulong)(bytes / LinkBytesPerSecond * 1e9);
}

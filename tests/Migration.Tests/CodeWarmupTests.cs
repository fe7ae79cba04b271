using CriuSharp.ImageFormat;

namespace CriuSharp.Migration.Tests;

/// <summary>
/// The warm-up both sides of migrate --transport tcp run before the first freeze swallows its
/// errors (the real migration goes on): these make sure it really migrates and verifies, in every
/// mode and page store a migration can ask for, so it never silently stops compiling anything.
/// </summary>
public sealed class CodeWarmupTests
{
    [Theory]
    [InlineData(MigrationMode.Precopy, "lz4", true, 0L)]
    [InlineData(MigrationMode.Precopy, "none", false, 0L)]
    [InlineData(MigrationMode.Postcopy, "lz4", false, 0L)]
    [InlineData(MigrationMode.Hybrid, "zstd", true, 1L << 20)]
    public void WarmUpMigration_VerifiesInEveryMode(MigrationMode mode, string compression, bool preload, long deltaCache)
    {
        var store = compression switch
        {
            "none" => PageStoreOptions.Raw,
            "zstd" => PageStoreOptions.Zstd(16),
            _ => PageStoreOptions.Lz4(),
        };
        string? finalDir = null;
        var (took, error) = CodeWarmup.Run(new MigrationOptions
        {
            // Replaced by the warm-up's own workload and policy: a real migration's options are passed as they are.
            WorkloadPath = "/nonexistent/workload.json",
            Policy = ConvergencePolicy.Parse("none"),
            Mode = mode,
            PageStore = store,
            Preload = preload,
            DeltaCacheBytes = deltaCache,
            ImagesRoot = "/nonexistent/images",
        }, dir => finalDir = dir);
        Assert.Null(error);
        Assert.True(took > TimeSpan.Zero);
        // The final dump's directory, handed over while it still exists, for the service's own restore.
        Assert.NotNull(finalDir);
        Assert.Equal(Path.GetFileName(finalDir), mode == MigrationMode.Postcopy ? "1" : "2");
        Assert.False(Directory.Exists(finalDir), "the warm-up's images are removed afterwards");
    }
}

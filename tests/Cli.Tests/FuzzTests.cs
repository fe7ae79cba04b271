using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>The fuzz engines at a fixed seed, bounded for the suite; 'criu-sharp fuzz' runs them longer.</summary>
public class FuzzTests
{
    [Fact]
    public void DamagedImages_RestoreIdenticallyOrFailWithOneTypedLine()
    {
        var r = FuzzImages.Run(new FuzzImages.Options
        {
            Seed = 1,
            Count = 10_000,
            PerVariantTimeout = TimeSpan.FromSeconds(10),
            AllocationCap = 128L << 20,
        });
        Assert.True(r.Failures.Count == 0, string.Join("\n", r.Failures) + "\n" + r);
        Assert.Equal(10_000, r.Variants);
        // Both verdicts must actually occur, or the mutations are too weak (or too strong) to mean anything.
        Assert.True(r.Restored > 500 && r.TypedErrors > 5000, r.ToString());
        Assert.Contains(r.ErrorKinds.Keys, k => k.Contains("VMA checksum mismatch"));
        Assert.Contains(r.ErrorKinds.Keys, k => k.Contains("incomplete"));
    }

    [Fact]
    public void RandomizedLoad_NeverLosesAWriteNorRestoresDifferentBytes()
    {
        var r = FuzzRun.Run(new FuzzRun.Options { Seed = 1, Duration = TimeSpan.FromSeconds(20) });
        Assert.True(r.Failure is null, r.ToString());
        Assert.True(r.Rounds >= 20 && r.Restores == r.Rounds, r.ToString());
    }
}

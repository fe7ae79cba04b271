using CriuSharp.Migration;

namespace CriuSharp.Migration.Tests;

/// <summary>The stop rules against hand-made iteration stats, number by number.</summary>
public class MigrationPolicyTests
{
    private static PolicyInput Input(ulong remaining = 1UL << 40, ulong scanned = 1000, params ulong[] written) => new()
    {
        Done = written.Select(w => new IterationSample(w, scanned, w * 100)).ToList(),
        BandwidthBytesPerSecond = QemuPolicy.DefaultBandwidth,
        RemainingBytes = remaining,
    };

    [Fact]
    public void Phaul_FirstPreDumpAlwaysRuns()
    {
        Assert.False(new PhaulPolicy().Decide(Input()).Stop);
    }

    [Theory]
    [InlineData(64UL, true)]    // MIN_ITER_PAGES_COUNT is "<=": exactly 64 stops
    [InlineData(65UL, false)]
    [InlineData(0UL, true)]
    public void Phaul_SmallDump(ulong written, bool stop)
    {
        var d = new PhaulPolicy().Decide(Input(written: written));
        Assert.Equal(stop, d.Stop);
        if (stop) Assert.Contains("small dump", d.Reason);
    }

    [Theory]
    [InlineData(1000UL, 1109UL, false)] // 10.9 % → integer 10, not > 10
    [InlineData(1000UL, 1110UL, true)]  // 11 %
    [InlineData(1000UL, 1100UL, false)] // exactly 10 %
    [InlineData(1000UL, 500UL, false)]  // shrinking is progress
    [InlineData(100UL, 111UL, true)]
    [InlineData(300UL, 332UL, false)]   // 32·100/300 = 10.67 → 10
    [InlineData(300UL, 333UL, true)]    // 33·100/300 = 11
    public void Phaul_GrowthUsesIntegerPercent(ulong prev, ulong cur, bool stop)
    {
        Assert.Equal(stop, PhaulPolicy.GrowRate(cur, prev) > 10);
        var d = new PhaulPolicy().Decide(Input(written: [prev, cur]));
        Assert.Equal(stop, d.Stop);
        if (stop) Assert.Contains("grows", d.Reason);
    }

    [Fact]
    public void Phaul_GrowRateFloorsLikePython2()
    {
        Assert.Equal(-34, PhaulPolicy.GrowRate(200, 300)); // -33.3 floors to -34 in Python 2
        Assert.Equal(10, PhaulPolicy.GrowRate(1109, 1000));
    }

    [Fact]
    public void Phaul_StopsAtIterationIndex8_SoNinePreDumps()
    {
        var p = new PhaulPolicy();
        var w = new List<ulong>();
        for (int i = 0; i < 9; i++)
        {
            w.Add(1000);
            var d = p.Decide(Input(written: [.. w]));
            Assert.Equal(i >= 8, d.Stop);
        }
        Assert.Equal(9, p.MaxPreDumps);
    }

    [Fact]
    public void Phaul_RuleOrder_SmallDumpBeforeGrowth()
    {
        var d = new PhaulPolicy().Decide(Input(written: [10, 60]));
        Assert.Contains("small dump", d.Reason);
    }

    [Fact]
    public void Qemu_StopsWhenRemainingFitsInBandwidthTimesDowntime()
    {
        var q = new QemuPolicy();
        double threshold = 128.0 * 1024 * 1024 * 0.3; // 40 265 318.4 bytes
        Assert.Equal(threshold, q.ThresholdBytes, 3);
        Assert.False(q.Decide(Input(remaining: 1, written: [])).Stop); // first pass always runs
        Assert.True(q.Decide(Input(remaining: 40_265_318, written: [1])).Stop);
        Assert.False(q.Decide(Input(remaining: 40_265_319, written: [1])).Stop);
    }

    [Fact]
    public void Qemu_ExpectedDowntimeIsBytesOverBandwidth()
    {
        Assert.Equal(1_000_000_000UL, QemuPolicy.ExpectedDowntimeNs(128UL << 20, 128.0 * 1024 * 1024));
        Assert.Equal(500_000_000UL, QemuPolicy.ExpectedDowntimeNs(64UL << 20, 128.0 * 1024 * 1024));
    }

    [Fact]
    public void Qemu_SafetyCap()
    {
        var q = new QemuPolicy(MaxIters: 3);
        Assert.False(q.Decide(Input(written: [1, 2])).Stop);
        var d = q.Decide(Input(written: [1, 2, 3]));
        Assert.True(d.Stop);
        Assert.Contains("safety cap", d.Reason);
        Assert.Equal(30, new QemuPolicy().MaxIters);
    }

    [Fact]
    public void Xen_Caps()
    {
        var x = new XenPolicy();
        Assert.False(x.Decide(Input(written: [])).Stop);
        // < 50 pages in a round
        Assert.True(x.Decide(Input(written: [49])).Stop);
        Assert.False(x.Decide(Input(written: [50])).Stop);
        // > 3 × memory sent (memory = 1000 pages scanned)
        Assert.False(x.Decide(Input(scanned: 1000, written: [1000, 1000, 1000])).Stop); // exactly 3×
        var over = x.Decide(Input(scanned: 1000, written: [1000, 1000, 1001]));
        Assert.True(over.Stop);
        Assert.Contains("3 x memory", over.Reason);
        // 29 iterations
        var many = Enumerable.Repeat(60UL, 28).ToArray();
        Assert.False(x.Decide(Input(scanned: 100_000, written: many)).Stop);
        var d = x.Decide(Input(scanned: 100_000, written: [.. many, 60]));
        Assert.True(d.Stop);
        Assert.Contains("29", d.Reason);
    }

    [Fact]
    public void Fixed_AndNone()
    {
        var f = new FixedPolicy(2);
        Assert.False(f.Decide(Input(written: [])).Stop);
        Assert.False(f.Decide(Input(written: [5])).Stop);
        Assert.True(f.Decide(Input(written: [5, 5])).Stop);
        Assert.True(new FixedPolicy(0).Decide(Input(written: [])).Stop);
        Assert.True(new NonePolicy().Decide(Input(written: [])).Stop);
    }

    [Theory]
    [InlineData("phaul", "phaul")]
    [InlineData("PHAUL:max-iters=3", "phaul:min-pages=64,max-grow=10,max-iters=3")]
    [InlineData("qemu", "qemu")]
    [InlineData("qemu:max-iters=5", "qemu:max-iters=5")]
    [InlineData("xen", "xen")]
    [InlineData("xen:min-pages=10", "xen:max-iters=29,max-factor=3,min-pages=10")]
    [InlineData("fixed:4", "fixed:4")]
    [InlineData("none", "none")]
    public void Parse_RoundTrips(string text, string spec)
    {
        Assert.Equal(spec, ConvergencePolicy.Parse(text).Spec);
        Assert.Equal(spec, ConvergencePolicy.Parse(spec).Spec);
    }

    [Theory]
    [InlineData("fixed")]
    [InlineData("fixed:x")]
    [InlineData("phaul:bogus=1")]
    [InlineData("phaul:max-iters")]
    [InlineData("postcopy")]
    public void Parse_Rejects(string text)
    {
        Assert.Throws<ArgumentException>(() => ConvergencePolicy.Parse(text));
    }
}

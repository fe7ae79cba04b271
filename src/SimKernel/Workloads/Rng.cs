using System.Runtime.CompilerServices;

namespace CriuSharp.SimKernel.Workloads;

/// <summary>
/// xoshiro256** with its state in four registers. The hot loops copy it into this struct (locals
/// the JIT keeps in CPU registers) and write it back when they stop, so the simulated registers
/// always hold the exact generator state a dump must save.
/// </summary>
internal struct Rng
{
    public ulong S0, S1, S2, S3;

    public static Rng Load(ulong[] regs) => new()
    {
        S0 = regs[Regs.Rng], S1 = regs[Regs.Rng + 1], S2 = regs[Regs.Rng + 2], S3 = regs[Regs.Rng + 3],
    };

    public readonly void Store(ulong[] regs)
    {
        regs[Regs.Rng] = S0;
        regs[Regs.Rng + 1] = S1;
        regs[Regs.Rng + 2] = S2;
        regs[Regs.Rng + 3] = S3;
    }

    /// <summary>Seeds the four state words from one 64-bit seed with splitmix64 (never all zero).</summary>
    public static void Seed(ulong[] regs, ulong seed)
    {
        ulong x = seed;
        for (int i = 0; i < 4; i++)
        {
            x += 0x9E3779B97F4A7C15UL;
            regs[Regs.Rng + i] = Mix(x);
        }
        if ((regs[Regs.Rng] | regs[Regs.Rng + 1] | regs[Regs.Rng + 2] | regs[Regs.Rng + 3]) == 0)
            regs[Regs.Rng] = 1;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Next()
    {
        ulong result = ulong.RotateLeft(S1 * 5, 7) * 9;
        ulong t = S1 << 17;
        S2 ^= S0;
        S3 ^= S1;
        S1 ^= S2;
        S0 ^= S3;
        S2 ^= t;
        S3 = ulong.RotateLeft(S3, 45);
        return result;
    }

    /// <summary>A value in [0, n) by multiply-shift (Lemire): one multiplication, no division.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Below(ulong n) => Math.BigMul(Next(), n, out _);

    /// <summary>True with probability threshold / 2^32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Chance(uint threshold) => threshold == uint.MaxValue || (uint)(Next() >> 32) < threshold;

    /// <summary>A double in [0, 1) with 53 random bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public double NextDouble() => (Next() >> 11) * (1.0 / (1UL << 53));

    /// <summary>splitmix64's finaliser: a bijection of 64-bit words with good avalanche.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}

/// <summary>
/// Zipf-distributed ranks in [1, n] by rejection-inversion (Hörmann and Derflinger, 1996), as in
/// Apache Commons RNG: constant time and no table, so a 1 GiB region needs no 2 MiB CDF. The
/// constants depend only on (n, exponent), which the program image holds.
/// </summary>
internal sealed class ZipfSampler
{
    private readonly ulong _n;
    private readonly double _e;
    private readonly double _hIntegralX1;
    private readonly double _hIntegralN;
    private readonly double _s;

    public ZipfSampler(ulong n, double exponent)
    {
        _n = n;
        _e = exponent;
        _hIntegralX1 = HIntegral(1.5) - 1.0;
        _hIntegralN = HIntegral(n + 0.5);
        _s = 2.0 - HIntegralInverse(HIntegral(2.5) - H(2.0));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Sample(ref Rng rng)
    {
        while (true)
        {
            double u = _hIntegralN + rng.NextDouble() * (_hIntegralX1 - _hIntegralN);
            double x = HIntegralInverse(u);
            double kd = Math.Floor(x + 0.5);
            if (kd < 1) kd = 1;
            else if (kd > _n) kd = _n;
            if (kd - x <= _s || u >= HIntegral(kd + 0.5) - H(kd))
                return (ulong)kd;
        }
    }

    private double H(double x) => Math.Exp(-_e * Math.Log(x));

    private double HIntegral(double x)
    {
        double logX = Math.Log(x);
        return Helper2((1.0 - _e) * logX) * logX;
    }

    private double HIntegralInverse(double x)
    {
        double t = x * (1.0 - _e);
        if (t < -1.0)
            t = -1.0;
        return Math.Exp(Helper1(t) * x);
    }

    private static double Helper1(double x) => Math.Abs(x) > 1e-8 ? Math.Log(1 + x) / x : 1 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x));

    private static double Helper2(double x) => Math.Abs(x) > 1e-8 ? (Math.Exp(x) - 1) / x : 1 + x * 0.5 * (1 + x * (1.0 / 3.0) * (1 + 0.25 * x));
}

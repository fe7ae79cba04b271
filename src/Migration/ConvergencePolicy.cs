using System.Globalization;

using CriuSharp.Dumper;

namespace CriuSharp.Migration;

/// <summary>What a policy sees of one finished pre-dump (CRIU's stats-dump names).</summary>
public sealed record IterationSample(ulong PagesWritten, ulong PagesScanned, ulong BytesSent);

/// <summary>
/// Everything a policy may look at when it decides, after each pre-dump (and once before the
/// first), whether to run another pre-dump or go to the final dump.
/// </summary>
public sealed record PolicyInput
{
    /// <summary>The pre-dumps done so far, oldest first.</summary>
    public required IReadOnlyList<IterationSample> Done { get; init; }
    /// <summary>Link bandwidth in bytes per second (QEMU's bandwidth).</summary>
    public required double BandwidthBytesPerSecond { get; init; }
    /// <summary>
    /// The bytes the final dump would have to send if we stopped now, as the last sync found them:
    /// the last pre-dump's dirty set as it went on the wire (QEMU: dirty bytes at the last bitmap
    /// sync), or the tree's resident memory before any pre-dump.
    /// </summary>
    public required ulong RemainingBytes { get; init; }
    /// <summary>Pages of the dumped VMAs (Xen's "guest memory"), from the last pre-dump's pages_scanned.</summary>
    public ulong MemoryPages => Done.Count == 0 ? 0 : Done[^1].PagesScanned;
}

/// <summary>A policy's answer: stop (go to the final dump) or not, and why, in a few words.</summary>
public readonly record struct PolicyDecision(bool Stop, string Reason)
{
    public static PolicyDecision Continue(string reason) => new(false, reason);
    public static PolicyDecision Finish(string reason) => new(true, reason);
}

/// <summary>
/// When to stop pre-copying. Consulted before the first pre-dump (a policy may choose
/// stop-and-copy) and after every pre-dump; the rules and numbers of each implementation are
/// taken from the system it is named after (p.haul phaul/iters.py, qemu migration/migration.c,
/// xen tools/libxc/xc_domain_save.c).
/// </summary>
public abstract record ConvergencePolicy
{
    /// <summary>Short name with its parameters, as <see cref="Parse"/> reads it back.</summary>
    public abstract string Spec { get; }
    /// <summary>The most pre-dumps this policy can ask for (for progress bars and sanity).</summary>
    public abstract int MaxPreDumps { get; }
    public abstract PolicyDecision Decide(PolicyInput input);

    public override string ToString() => Spec;

    /// <summary>
    /// Reads <c>phaul</c>, <c>qemu</c>, <c>xen</c>, <c>fixed:N</c> or <c>none</c>, each optionally
    /// followed by <c>:key=value,...</c> to change a threshold (keys in each policy's doc).
    /// </summary>
    public static ConvergencePolicy Parse(string text, double bandwidthBytesPerSecond = QemuPolicy.DefaultBandwidth, ulong downtimeLimitNs = QemuPolicy.DefaultDowntimeLimitNs)
    {
        var t = text.Trim().ToLowerInvariant();
        int colon = t.IndexOf(':');
        string name = colon < 0 ? t : t[..colon];
        string rest = colon < 0 ? "" : t[(colon + 1)..];
        if (name == "fixed")
        {
            if (!int.TryParse(rest, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n > 1000)
                throw new ArgumentException($"policy '{text}': fixed needs a pre-dump count, e.g. fixed:3 (0 to 1000)");
            return new FixedPolicy(n);
        }
        var kv = ParseParams(text, rest);
        long Get(string key, long dflt)
        {
            if (!kv.Remove(key, out var v)) return dflt;
            return long.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out long x) && x <= int.MaxValue
                ? x : throw new ArgumentException($"policy '{text}': {key}={v} is not a non-negative integer");
        }
        ConvergencePolicy p = name switch
        {
            "phaul" => new PhaulPolicy((ulong)Get("min-pages", (long)PhaulPolicy.DefaultMinPages), (int)Get("max-grow", PhaulPolicy.DefaultMaxGrowPercent), (int)Get("max-iters", PhaulPolicy.DefaultMaxIters)),
            "qemu" => new QemuPolicy(bandwidthBytesPerSecond, downtimeLimitNs, (int)Get("max-iters", QemuPolicy.DefaultMaxIters)),
            "xen" => new XenPolicy((int)Get("max-iters", XenPolicy.DefaultMaxIters), (int)Get("max-factor", XenPolicy.DefaultMaxFactor), (ulong)Get("min-pages", (long)XenPolicy.DefaultMinPages)),
            "none" or "stop-and-copy" => new NonePolicy(),
            _ => throw new ArgumentException($"unknown policy '{text}' (expected phaul, qemu, xen, fixed:N or none)"),
        };
        if (kv.Count > 0)
            throw new ArgumentException($"policy '{text}': unknown parameter '{kv.Keys.First()}' for {name}");
        return p;
    }

    private static Dictionary<string, string> ParseParams(string text, string rest)
    {
        var kv = new Dictionary<string, string>();
        foreach (var part in rest.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = part.IndexOf('=');
            if (eq <= 0)
                throw new ArgumentException($"policy '{text}': expected key=value, got '{part}'");
            kv[part[..eq]] = part[(eq + 1)..];
        }
        return kv;
    }
}

/// <summary>
/// P.Haul's live-migration rule (p.haul phaul/iters.py <c>__check_live_iter_progress</c>), checked in
/// this order after pre-dump number <c>index</c> (from 0): stop if pages_written ≤ 64
/// (<c>MIN_ITER_PAGES_COUNT</c>); stop if the growth over the previous pre-dump,
/// (cur − prev)·100 / prev in Python 2 integer arithmetic (floor), exceeds 10 %
/// (<c>MAX_ITER_GROW_RATE</c>); stop if index ≥ 8 (<c>MAX_ITERS_COUNT</c>) — so at most 9 pre-dumps.
/// Keys: min-pages, max-grow, max-iters.
/// </summary>
public sealed record PhaulPolicy(ulong MinPages = PhaulPolicy.DefaultMinPages, int MaxGrowPercent = PhaulPolicy.DefaultMaxGrowPercent, int MaxIters = PhaulPolicy.DefaultMaxIters) : ConvergencePolicy
{
    public const ulong DefaultMinPages = 64;
    public const int DefaultMaxGrowPercent = 10;
    public const int DefaultMaxIters = 8;

    public override string Spec => MinPages == DefaultMinPages && MaxGrowPercent == DefaultMaxGrowPercent && MaxIters == DefaultMaxIters
        ? "phaul" : $"phaul:min-pages={MinPages},max-grow={MaxGrowPercent},max-iters={MaxIters}";
    public override int MaxPreDumps => MaxIters + 1;

    /// <summary>P.Haul's <c>__calc_grow_rate</c>: Python 2 <c>/</c> on ints floors.</summary>
    public static long GrowRate(ulong cur, ulong prev)
    {
        long delta = (long)cur - (long)prev;
        return FloorDiv(delta * 100, (long)prev);
    }

    private static long FloorDiv(long a, long b) => a / b - ((a % b != 0 && (a < 0) != (b < 0)) ? 1 : 0);

    public override PolicyDecision Decide(PolicyInput input)
    {
        var done = input.Done;
        if (done.Count == 0)
            return PolicyDecision.Continue("first pre-dump");
        int index = done.Count - 1;
        var cur = done[^1];
        if (cur.PagesWritten <= MinPages)
            return PolicyDecision.Finish($"small dump: {cur.PagesWritten} pages written <= {MinPages}");
        if (done.Count > 1)
        {
            ulong prev = done[^2].PagesWritten;
            long grow = GrowRate(cur.PagesWritten, prev);
            if (grow > MaxGrowPercent)
                return PolicyDecision.Finish($"iteration grows: {grow}% > {MaxGrowPercent}% ({prev} -> {cur.PagesWritten} pages)");
        }
        if (index >= MaxIters)
            return PolicyDecision.Finish($"too many iterations: index {index} >= {MaxIters}");
        return PolicyDecision.Continue("proceed to next iteration");
    }
}

/// <summary>
/// QEMU's switch-over test (qemu migration/migration.c <c>migration_iteration_run</c>): stop when the
/// remaining dirty bytes fit in threshold = bandwidth × downtime-limit (defaults: max-bandwidth
/// 128 MiB/s, downtime-limit 300 ms). QEMU has no iteration cap; we add one (default 30 pre-dumps)
/// so a workload that never converges still finishes, and say so in the stop reason.
/// Key: max-iters (bandwidth and downtime limit come from their own options).
/// </summary>
public sealed record QemuPolicy(double BandwidthBytesPerSecond = QemuPolicy.DefaultBandwidth, ulong DowntimeLimitNs = QemuPolicy.DefaultDowntimeLimitNs, int MaxIters = QemuPolicy.DefaultMaxIters) : ConvergencePolicy
{
    public const double DefaultBandwidth = 128.0 * 1024 * 1024;
    public const ulong DefaultDowntimeLimitNs = 300_000_000;
    public const int DefaultMaxIters = 30;

    public override string Spec => MaxIters == DefaultMaxIters ? "qemu" : $"qemu:max-iters={MaxIters}";
    public override int MaxPreDumps => MaxIters;

    public double ThresholdBytes => BandwidthBytesPerSecond * DowntimeLimitNs / 1e9;

    /// <summary>QEMU's expected-downtime: dirty bytes at the last sync ÷ bandwidth.</summary>
    public static ulong ExpectedDowntimeNs(ulong remainingBytes, double bandwidth) =>
        bandwidth <= 0 ? 0 : (ulong)(remainingBytes / bandwidth * 1e9);

    public override PolicyDecision Decide(PolicyInput input)
    {
        // Before any pre-dump nothing has been sent: QEMU's first pass always runs (everything is dirty).
        if (input.Done.Count == 0)
            return PolicyDecision.Continue("first pass");
        double threshold = ThresholdBytes;
        if (input.RemainingBytes <= threshold)
            return PolicyDecision.Finish($"remaining {input.RemainingBytes} B <= threshold {threshold:0} B (bandwidth x downtime-limit)");
        if (input.Done.Count >= MaxIters)
            return PolicyDecision.Finish($"safety cap: {MaxIters} pre-dumps without converging (QEMU itself has no cap)");
        return PolicyDecision.Continue($"remaining {input.RemainingBytes} B > threshold {threshold:0} B");
    }
}

/// <summary>
/// Xen's reference stop-and-copy guardrails (xen tools/libxc/xc_domain_save.c): enter the last
/// round when 29 iterations are done (<c>DEF_MAX_ITERS</c>), or more than 3 × memory has been sent
/// (<c>DEF_MAX_FACTOR</c>), or a round sent fewer than 50 pages. Xen's fourth rule (dirty count grew
/// while already at the maximum rate) needs rate limiting, which the link model does not do.
/// Keys: max-iters, max-factor, min-pages.
/// </summary>
public sealed record XenPolicy(int MaxIters = XenPolicy.DefaultMaxIters, int MaxFactor = XenPolicy.DefaultMaxFactor, ulong MinPages = XenPolicy.DefaultMinPages) : ConvergencePolicy
{
    public const int DefaultMaxIters = 29;
    public const int DefaultMaxFactor = 3;
    public const ulong DefaultMinPages = 50;

    public override string Spec => MaxIters == DefaultMaxIters && MaxFactor == DefaultMaxFactor && MinPages == DefaultMinPages
        ? "xen" : $"xen:max-iters={MaxIters},max-factor={MaxFactor},min-pages={MinPages}";
    public override int MaxPreDumps => MaxIters;

    public override PolicyDecision Decide(PolicyInput input)
    {
        var done = input.Done;
        if (done.Count == 0)
            return PolicyDecision.Continue("first round");
        if (done.Count >= MaxIters)
            return PolicyDecision.Finish($"{done.Count} iterations >= {MaxIters}");
        ulong sent = done.Aggregate(0UL, (s, d) => s + d.PagesWritten);
        ulong memory = input.MemoryPages;
        if (sent > (ulong)MaxFactor * memory)
            return PolicyDecision.Finish($"sent {sent} pages > {MaxFactor} x memory ({memory} pages)");
        if (done[^1].PagesWritten < MinPages)
            return PolicyDecision.Finish($"round sent {done[^1].PagesWritten} pages < {MinPages}");
        return PolicyDecision.Continue("next round");
    }
}

/// <summary>Exactly N pre-dumps, then the final dump (fixed:0 is stop-and-copy).</summary>
public sealed record FixedPolicy(int Count) : ConvergencePolicy
{
    public override string Spec => $"fixed:{Count}";
    public override int MaxPreDumps => Count;

    public override PolicyDecision Decide(PolicyInput input) => input.Done.Count >= Count
        ? PolicyDecision.Finish($"{Count} pre-dumps done")
        : PolicyDecision.Continue($"pre-dump {input.Done.Count + 1} of {Count}");
}

/// <summary>Stop-and-copy: no pre-dump; the final dump copies everything while the tree is frozen.</summary>
public sealed record NonePolicy : ConvergencePolicy
{
    public override string Spec => "none";
    public override int MaxPreDumps => 0;
    public override PolicyDecision Decide(PolicyInput input) => PolicyDecision.Finish("stop-and-copy");
}

using System.Diagnostics;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;

namespace CriuSharp.Migration;

/// <summary>
/// A .NET process compiles each method the first time it runs it. Over <c>--transport tcp</c> the
/// final dump (source) and the restore (destination) are the first calls of most of their code, so a
/// cold process would count its JIT compilation in the downtime, a cost a long-running CRIU (C)
/// does not have. Before anything is frozen, each side runs one tiny in-process migration of the
/// same mode, kernel and page store: pre-dump, final dump, pre-loading, restore (lazily for
/// post-copy and hybrid) and verification, so the code the downtime runs is already compiled.
/// Nothing of it leaves this process; its images (and the service's machine) go to a temporary
/// directory removed afterwards.
/// </summary>
internal static class CodeWarmup
{
    // 4 MiB written at random (Zipf): runs, holes, compression blocks, parent links and huge-page
    // sized ranges, with loops long enough to be compiled as a large tree's are; still milliseconds once compiled.
    private const string Workload = """
        { "seed": 1, "processes": [ { "name": "warm-up",
          "mappings": [ { "name": "heap", "size": "4MiB", "prot": "rw" } ],
          "behaviour": { "type": "hotcold", "mapping": "heap", "distribution": "zipf", "exponent": 1.1, "pages_per_second": 20000, "prefill": true } } ] }
        """;

    /// <summary>
    /// Runs the warm-up migration with <paramref name="like"/>'s mode, kernel, page store, pre-loading,
    /// elision and deltas; returns its wall-clock time and, when it failed, why (the real migration
    /// goes on either way).
    /// </summary>
    /// <param name="restoreAgain">
    /// Called with the warm-up's final images directory, for a destination whose restore takes
    /// another road than the in-process one (migrate-service restores into a saved machine).
    /// </param>
    public static (TimeSpan Took, string? Error) Run(MigrationOptions like, Action<string>? restoreAgain = null)
    {
        var sw = Stopwatch.StartNew();
        string dir = Path.Combine(Path.GetTempPath(), "criu-sharp-warmup-" + Guid.NewGuid().ToString("N"));
        try
        {
            Directory.CreateDirectory(dir);
            string workload = Path.Combine(dir, "warm-up.json");
            File.WriteAllText(workload, Workload);
            // Its dumps and restores pass no crash point: crash tests count the migration's own steps.
            var r = ImageFormat.CrashPoints.Without(() => SimKernel.Machine.CrashPoints.Without(() => LiveMigration.Run(like with
            {
                WorkloadPath = workload,
                Policy = ConvergencePolicy.Parse("fixed:1"),
                WarmupNs = 5_000_000,
                ContinueNs = 5_000_000,
                ImagesRoot = Path.Combine(dir, "images"),
                Tcp = null,
                Progress = null,
                IterationDone = null,
                SourceLostAfterNs = null,
            })));
            if (!r.Verification.Ok)
                return (sw.Elapsed, r.Verification.Error ?? "the warm-up migration did not verify");
            if (restoreAgain is not null)
                ImageFormat.CrashPoints.Without(() => SimKernel.Machine.CrashPoints.Without(() =>
                {
                    restoreAgain(r.Iterations[^1].ImagesDir);
                    return 0;
                }));
            return (sw.Elapsed, null);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Best effort: whatever the warm-up ran into becomes a warning, never the migration's failure.
            return (sw.Elapsed, e.Message);
        }
        finally
        {
            try { Directory.Delete(dir, true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}

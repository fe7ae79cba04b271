using Spectre.Console;

namespace CriuSharp.Cli;

/// <summary>
/// A spinner with the elapsed time on stderr while long work runs (spawn's prefill, dump,
/// restore), only when both streams are a terminal and the output is not JSON: a pipe or a
/// log never sees control sequences.
/// </summary>
public static class TerminalProgress
{
    public static bool Enabled(bool json) => !json && !Console.IsOutputRedirected && !Console.IsErrorRedirected;

    public static T Run<T>(bool json, string title, Func<T> work)
    {
        if (!Enabled(json))
            return work();
        var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        T result = default!;
        var watch = System.Diagnostics.Stopwatch.StartNew();
        console.Status().Spinner(Spinner.Known.Dots).Start(title, ctx =>
        {
            var task = Task.Run(work);
            // Shown only once the work has taken about a second; short commands stay quiet.
            while (!task.Wait(200))
                if (watch.Elapsed.TotalSeconds >= 1)
                    ctx.Status($"{title} ({watch.Elapsed.TotalSeconds:0} s)");
            result = task.GetAwaiter().GetResult();
        });
        return result;
    }
}

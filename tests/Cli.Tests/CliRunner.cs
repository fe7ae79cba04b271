using System.Diagnostics;

namespace CriuSharp.Cli.Tests;

/// <summary>Runs the CLI in-process (fast) or as the built executable (end to end).</summary>
internal static class CliRunner
{
    public sealed record Result(int Code, string Out, string Err)
    {
        public string[] ErrLines => Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    public static Result Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = CliApp.Run(args, o, e);
        return new Result(code, o.ToString(), e.ToString());
    }

    /// <summary>The criu-sharp executable built next to this test assembly.</summary>
    public static Result RunProcess(string workDir, params string[] args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = workDir };
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment.Remove("CRIU_SHARP_MACHINE");
        using var p = Process.Start(psi)!;
        // Both pipes are drained at once: a child that fills one while we block reading the other
        // would never exit, and reading either to its end first would make the timeout unreachable.
        var stdoutTask = p.StandardOutput.ReadToEndAsync();
        var stderrTask = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000))
        {
            p.Kill(true);
            p.WaitForExit();
            throw new TimeoutException($"criu-sharp {string.Join(' ', args)} did not finish in 120 s");
        }
        p.WaitForExit(); // lets the redirected streams reach their end
        string stdout = stdoutTask.GetAwaiter().GetResult();
        string stderr = stderrTask.GetAwaiter().GetResult();
        return new Result(p.ExitCode, stdout, stderr);
    }

    /// <summary>The repository root (where samples/ lives), found from the test's directory.</summary>
    public static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "criu-sharp.sln")))
            d = d.Parent;
        return d?.FullName ?? throw new DirectoryNotFoundException("repository root not found");
    }
}

/// <summary>A fresh machine directory per test.</summary>
public sealed class TempMachine : IDisposable
{
    public string Dir { get; } = Path.Combine(Path.GetTempPath(), "criu-sharp-cli-" + Guid.NewGuid().ToString("N"));
    public void Dispose()
    {
        if (Directory.Exists(Dir))
            Directory.Delete(Dir, true);
    }
}

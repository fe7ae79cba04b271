using System.CommandLine;

namespace CriuSharp.Cli;

/// <summary>
/// Builds the command tree and is the one place where failures become an exit code and one line
/// on stderr. Verbs live in <c>Commands/</c>, one file each; shared options in <c>Options/</c>.
/// </summary>
public static class CliApp
{
    public static RootCommand BuildRoot()
    {
        var root = new RootCommand(
            "criu-sharp: CRIU-style pre-dump, dump and restore of processes in a simulated Linux kernel " +
            "with faithful soft-dirty, pagemap, PAGEMAP_SCAN and userfaultfd write-protect tracking.");
        root.Options.Add(CommonOptions.Verbose);
        root.Options.Add(CommonOptions.Lz4);
        foreach (var command in Commands())
            root.Subcommands.Add(command);
        return root;
    }

    /// <summary>Every verb, in the order --help lists them.</summary>
    private static IEnumerable<Command> Commands()
    {
        // The simulated host.
        yield return MachineCommands.Spawn();
        yield return MachineCommands.Run();
        yield return MachineCommands.Ps();
        yield return MachineCommands.Kill();
        yield return MachineCommands.Verify();
        // Checkpoint and restore, as CRIU.
        yield return CheckpointCommands.PreDump();
        yield return CheckpointCommands.Dump();
        yield return CheckpointCommands.Restore();
        yield return CheckCommand.Create();
        // Live migration between two simulated hosts.
        yield return MigrateCommand.Create();
        yield return CompareCommand.Create();
        yield return ReportCommand.Create();
        // Real workloads: record a process, inspect images and traces.
        yield return RecordCommand.Create();
        yield return InspectImagesCommand.Create();
        // The kernel's interfaces.
        yield return InspectCommands.Maps();
        yield return InspectCommands.Smaps();
        yield return InspectCommands.Pagemap();
        yield return InspectCommands.ClearRefs();
        yield return SelftestCommand.Create();
        // Images, as crit.
        yield return ShowCommand.Create();
        yield return DecodeCommand.Create();
        yield return EncodeCommand.Create();
        yield return ExploreCommand.Create();
        // Hardening: long runs of the fuzz tests.
        yield return FuzzCommand.Create();
    }

    public static int Run(string[] args, TextWriter? stdout = null, TextWriter? stderr = null)
    {
        stdout ??= Console.Out;
        stderr ??= Console.Error;
        // Trace workloads read their recordings (CRIU images) through this layer.
        Traces.TraceFile.Register();
        var root = BuildRoot();
        var parse = root.Parse(args);
        bool verbose = parse.GetValue(CommonOptions.Verbose);
        // A mistyped option would otherwise be taken as the value of a positional argument.
        string? stray = parse.Tokens.FirstOrDefault(t => t.Type == System.CommandLine.Parsing.TokenType.Argument
            && t.Value.Length > 1 && t.Value[0] == '-' && !double.TryParse(t.Value, out _))?.Value;
        if (parse.Errors.Count > 0 || stray is not null)
        {
            stderr.WriteLine($"criu-sharp: {(stray is not null ? $"unrecognized option '{stray}'" : parse.Errors[0].Message)}");
            stderr.WriteLine($"Try '{UsageName(parse)} --help'.");
            return (int)ExitCode.Usage;
        }
        ImageFormat.Lz4Engines.Preferred = ImageFormat.Lz4Engines.Parse(parse.GetValue(CommonOptions.Lz4) ?? "auto");
        try
        {
            var config = new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false };
            return parse.Invoke(config);
        }
        catch (Exception ex)
        {
            var (code, message, hint) = Classify(ex);
            // One line, whatever the exception carries (the loader's DllNotFoundException lists every
            // path it tried, one per line); --verbose prints the rest.
            stderr.WriteLine($"criu-sharp: {FirstLine(message)}");
            if (hint is not null)
                stderr.WriteLine(hint);
            if (verbose)
                stderr.WriteLine(ex.ToString());
            return (int)code;
        }
    }

    internal static string FirstLine(string message)
    {
        int nl = message.IndexOfAny(['\r', '\n']);
        return (nl < 0 ? message : message[..nl]).TrimEnd(' ', ':');
    }

    private static string UsageName(ParseResult parse)
    {
        var names = new List<string>();
        for (var r = parse.CommandResult; r is not null; r = r.Parent as System.CommandLine.Parsing.CommandResult)
            names.Add(r.Command.Name);
        names.Reverse();
        if (names.Count > 0)
            names[0] = "criu-sharp";
        return string.Join(' ', names);
    }

    /// <summary>The library's name from the loader's message ("Unable to load shared library 'liblz4.so.1' or ...").</summary>
    private static string NativeLibraryName(string message)
    {
        var m = System.Text.RegularExpressions.Regex.Match(message, "'([^']+)'");
        return m.Success ? $"{m.Groups[1].Value} cannot be loaded" : FirstLine(message);
    }

    /// <summary>Maps an exception from any layer to an exit code and one line for the user.</summary>
    internal static (ExitCode Code, string Message, string? Hint) Classify(Exception ex) => ex switch
    {
        UserException u => (u.Code, u.Message, u.Hint),
        ImageFormat.ImageFormatException i => (ExitCode.BadImage, i.Message, null),
        CriuSharp.KernelApi.KernelException k => (ExitCode.KernelError, k.Message, null),
        // A dump/restore failure caused by the images themselves (incomplete, damaged, missing
        // pages, contents that fail the VMA checksum) is a bad image, as the README promises.
        Dumper.DumperException { InnerException: ImageFormat.ImageFormatException } d => (ExitCode.BadImage, d.Message, null),
        Dumper.DumperException d => (ExitCode.BadInput, d.Message, null),
        SimKernel.Machine.MachineBusyException b => (ExitCode.Busy, b.Message, "Retry later, or raise --wait."),
        SimKernel.Machine.MachineStateException s => (ExitCode.BadInput, s.Message, null),
        SimKernel.Workloads.WorkloadException w => (ExitCode.BadInput, w.Message, "The workload schema is in samples/README.md."),
        DllNotFoundException d => (ExitCode.Environment, $"a native library is missing: {NativeLibraryName(d.Message)}", "Install it with apt-get (liblz4-1, libzstd1, libxxhash0)."),
        UnauthorizedAccessException a => (ExitCode.Environment, a.Message, "Check the permissions, or whether the filesystem is mounted read-only."),
        IOException io when io.HResult == 28 || io.Message.Contains("No space left", StringComparison.Ordinal) =>
            (ExitCode.Environment, io.Message, "Free some space or choose another directory; nothing written so far is marked complete."),
        IOException io => (ExitCode.Environment, io.Message, null),
        OperationCanceledException => (ExitCode.Environment, "interrupted", null),
        _ => (ExitCode.Internal, $"internal error: {ex.GetType().Name}: {ex.Message}", "This is a bug; run again with --verbose for the stack."),
    };
}

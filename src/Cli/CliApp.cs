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
        root.Options.Add(CommonOptions.StackTrace);
        root.Options.Add(CommonOptions.Verbosity);
        root.Options.Add(CommonOptions.LogFile);
        root.Options.Add(CommonOptions.LogPid);
        root.Options.Add(CommonOptions.Lz4);
        // CRIU prints its version with -V as well as --version.
        foreach (var v in root.Options.OfType<VersionOption>())
            v.Aliases.Add("-V");
        foreach (var command in Commands())
            root.Subcommands.Add(command);
        // No verb: list them (the help), and fail as a usage error, as criu without a command does.
        root.SetAction(p =>
        {
            new System.CommandLine.Help.HelpAction().Invoke(p);
            return (int)ExitCode.Usage;
        });
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
        yield return DedupCommand.Create();
        yield return PageServerCommand.Create();
        yield return LazyPagesCommand.Create();
        yield return CheckCommand.Create();
        // CRIU's RPC service, as pycriu, libcriu and go-criu drive it.
        yield return Rpc.RpcCommands.Swrk();
        yield return Rpc.RpcCommands.Service();
        // Live migration between two simulated hosts.
        yield return MigrateCommand.Create();
        yield return MigrateServiceCommand.Create();
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
        var parse = root.Parse(CliLog.RewriteVerbosity(args));
        bool verbose = parse.GetValue(CommonOptions.StackTrace);
        // A mistyped option would otherwise be taken as the value of a positional argument.
        // Only a token shaped like an option counts: "-1s" is a (negative) value, refused by its parser.
        string? stray = parse.Tokens.FirstOrDefault(t => t.Type == System.CommandLine.Parsing.TokenType.Argument
            && t.Value.Length > 1 && t.Value[0] == '-' && !char.IsDigit(t.Value[1]) && t.Value[1] != '.')?.Value;
        // Under --json a failure is a JSON object on stderr too, so a script reads one format.
        bool json = args.Contains("--json");
        if (parse.Errors.Count > 0 || stray is not null)
        {
            string message = stray is not null ? $"unrecognized option '{stray}'" : ParseError(parse.Errors[0].Message);
            string hint = $"Try '{UsageName(parse)} --help'.";
            if (json)
                stderr.WriteLine(JsonOut.Error(ExitCode.Usage, message, hint));
            else
            {
                stderr.WriteLine($"criu-sharp: {message}");
                stderr.WriteLine(hint);
            }
            return (int)ExitCode.Usage;
        }
        ImageFormat.Lz4Engines.Preferred = ImageFormat.Lz4Engines.Parse(parse.GetValue(CommonOptions.Lz4) ?? "auto");
        CliLog? log = null;
        try
        {
            log = StartLog(parse, stderr);
            log.Write(CliLog.Info, $"Version: criu-sharp {typeof(CliApp).Assembly.GetName().Version} (pid {Environment.ProcessId})");
            log.Write(CliLog.Info, $"Command line: criu-sharp {string.Join(' ', args)}");
            var config = new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false };
            int rc = parse.Invoke(config);
            log.Write(rc == 0 ? CliLog.Info : CliLog.Error, $"Finished with exit code {rc}");
            return rc;
        }
        catch (Exception ex)
        {
            var (code, message, hint) = Classify(ex);
            log?.Write(CliLog.Error, $"{FirstLine(message)} (exit code {(int)code})");
            if (verbose)
                stderr.WriteLine(ex.ToString());
            if (json)
            {
                stderr.WriteLine(JsonOut.Error(code, FirstLine(message), hint));
                return (int)code;
            }
            // One line, whatever the exception carries (the loader's DllNotFoundException lists every
            // path it tried, one per line); --verbose prints the rest.
            stderr.WriteLine($"criu-sharp: {FirstLine(message)}");
            if (hint is not null)
                stderr.WriteLine(hint);
            return (int)code;
        }
        finally
        {
            log?.Dispose();
        }
    }

    /// <summary>The command's log: -o FILE relative to the images directory (-D) when the verb has one, else to the current directory.</summary>
    private static CliLog StartLog(ParseResult parse, TextWriter stderr)
    {
        string baseDir = Environment.CurrentDirectory;
        var imagesDir = parse.CommandResult.Command.Options.FirstOrDefault(o => o.Name == "--images-dir");
        if (imagesDir is not null && parse.GetResult(imagesDir) is { } r && r.Tokens.Count > 0)
            baseDir = Path.GetFullPath(r.Tokens[0].Value);
        return CliLog.Start(parse.GetValue(CommonOptions.LogFile), baseDir, stderr, parse.GetValue(CommonOptions.Verbosity), parse.GetValue(CommonOptions.LogPid));
    }

    /// <summary>
    /// System.CommandLine's conversion errors name .NET types ("as expected type 'System.Int32'");
    /// users are told what kind of value the option takes instead.
    /// </summary>
    internal static string ParseError(string message)
    {
        var m = System.Text.RegularExpressions.Regex.Match(message,
            "^Cannot parse argument '(.*)' for (?:option|command|argument) '(.*)' as expected type '([^']*)'");
        if (!m.Success)
        {
            // "Argument 'x' not recognized. Must be one of:" is followed by one allowed value per
            // line; the one line we print keeps them.
            var lines = message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return lines.Length > 1 && lines[0].EndsWith("one of:", StringComparison.Ordinal)
                ? $"{lines[0]} {string.Join(", ", lines[1..])}"
                : FirstLine(message);
        }
        string kind = m.Groups[3].Value switch
        {
            "System.Int32" or "System.Int64" or "System.UInt32" or "System.UInt64" => "a whole number",
            "System.Double" or "System.Single" => "a number",
            "System.Boolean" => "true or false",
            "System.IO.FileInfo" or "System.IO.DirectoryInfo" => "a path",
            _ => "a different kind of value",
        };
        return $"{m.Groups[2].Value} '{m.Groups[1].Value}': not {kind}";
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

    /// <summary>
    /// .NET's file-system messages ("The file '/x' already exists.", "Read-only file system : '/x'")
    /// restated in the tool's words. On Linux the exception's HResult is the errno (see errno(3)).
    /// </summary>
    private static (ExitCode, string, string?) FileSystemError(Exception ex)
    {
        var m = System.Text.RegularExpressions.Regex.Match(ex.Message, "'([^']+)'");
        string path = m.Success ? m.Groups[1].Value : "";
        string at = path.Length > 0 ? $"{path}: " : "";
        return ex switch
        {
            UnauthorizedAccessException => (ExitCode.Environment, $"{at}permission denied", "Check the permissions, or whether the file system is mounted read-only."),
            IOException { HResult: 30 } => (ExitCode.Environment, $"{at}the file system is read-only", "Choose a directory on a writable file system."),
            IOException io when io.HResult == 28 || io.Message.Contains("No space left", StringComparison.Ordinal) =>
                (ExitCode.Environment, $"{at}no space left on the device", "Free some space or choose another directory; nothing written so far is marked complete."),
            IOException io when io.HResult == 17 || io.Message.Contains("already exists", StringComparison.Ordinal) =>
                (ExitCode.Environment, $"{at}already exists and is not a directory", "Name a directory, or a path that does not exist yet."),
            IOException { HResult: 20 } => (ExitCode.Environment, $"{at}a part of the path is not a directory", "Check the path."),
            FileNotFoundException or DirectoryNotFoundException => (ExitCode.BadInput, $"{at}no such file or directory", "Check the path."),
            PathTooLongException => (ExitCode.BadInput, $"{at}the path is too long", null),
            _ => (ExitCode.Environment, $"file system error: {FirstLine(ex.Message)}", "Check the path, its permissions and the free space."),
        };
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
        Dumper.DumperException { Kind: Dumper.DumperErrorKind.Unsupported } d => (ExitCode.Unsupported, d.Message, null),
        Dumper.DumperException { Kind: Dumper.DumperErrorKind.Timeout } d => (ExitCode.Timeout, d.Message, "Raise --timeout (seconds; 0: no limit), or dump a smaller tree."),
        Dumper.DumperException d => (ExitCode.BadInput, d.Message, null),
        CriuSharp.KernelApi.KernelNotSupportedException n => (ExitCode.Unsupported, n.Message, null),
        Dumper.PageServer.PageServerException ps => (ExitCode.Environment, ps.Message, "Check that the page server runs, listens on --address/--port, and speaks the same --ps-layout and TLS options."),
        Migration.MigrationTransportException mt => (ExitCode.Environment, mt.Message, "migrate --transport tcp: the destination (migrate-service) must be reachable and run until the migration ends."),
        SimKernel.Machine.MachineBusyException b => (ExitCode.Busy, b.Message, "Retry later, or raise --wait."),
        SimKernel.Machine.MachineStateException s => (ExitCode.BadInput, s.Message, null),
        SimKernel.Workloads.WorkloadException w => (ExitCode.BadInput, w.Message, "The workload schema is in samples/README.md."),
        DllNotFoundException d => (ExitCode.Environment, $"a native library is missing: {NativeLibraryName(d.Message)}", "Install it with apt-get (liblz4-1, libzstd1, libxxhash0)."),
        UnauthorizedAccessException or IOException => FileSystemError(ex),
        OperationCanceledException => (ExitCode.Environment, "interrupted", null),
        _ => (ExitCode.Internal, $"internal error: {ex.GetType().Name}: {ex.Message}", "This is a bug; run again with --verbose for the stack."),
    };
}

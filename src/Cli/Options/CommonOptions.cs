using System.CommandLine;

namespace CriuSharp.Cli;

/// <summary>Options shared by several verbs, defined once so their names and help never drift.</summary>
public static class CommonOptions
{
    public static readonly Option<bool> StackTrace = new("--stack-trace")
    {
        Description = "Print the full exception (with its stack) on failure.",
        Recursive = true,
    };

    public static readonly Option<int> Verbosity = new Option<int>("--verbosity")
    {
        Description = "Log level as CRIU's -v0..-v4 (also written -v0 ... -v4, or -v, -vv): 0 messages, 1 errors, 2 warnings (default), 3 info, 4 debug.",
        DefaultValueFactory = _ => CliLog.DefaultLevel,
        Recursive = true,
    }.AcceptOnlyFromAmong("0", "1", "2", "3", "4");

    public static readonly Option<string?> LogFile = new("--log-file", "-o")
    {
        Description = "Write the log to FILE, relative to the images directory (-D) as in CRIU.",
        Recursive = true,
    };

    public static readonly Option<bool> LogPid = new("--log-pid")
    {
        Description = "Start every log line with the process id, as CRIU's --log-pid.",
        Recursive = true,
    };

    /// <summary>
    /// The LZ4 implementation for page blocks. The images are the same bytes either way; this only
    /// picks the code that makes them (and the one that reads them).
    /// </summary>
    public static readonly Option<string> Lz4 = new Option<string>("--lz4")
    {
        Description = "LZ4 implementation: native (liblz4.so.1), managed (K4os.Compression.LZ4) or auto " +
            "(native when liblz4 loads, else managed). Images are identical either way.",
        DefaultValueFactory = _ => "auto",
        Recursive = true,
    }.AcceptOnlyFromAmong("auto", "native", "managed");

    public static Option<bool> Json() => new("--json")
    {
        Description = "Print the result as JSON on stdout.",
    };

    public static Option<string> Arch() => new Option<string>("--arch")
    {
        Description = "Architecture profile of the simulated kernel: x86_64, ppc64, arm64.",
        DefaultValueFactory = _ => "x86_64",
    }.AcceptOnlyFromAmong("x86_64", "ppc64", "arm64");

    public static Option<string> Kernel() => new Option<string>("--kernel")
    {
        Description = "Kernel version profile: modern (6.18), linux-6.12 (no sticky VM_SOFTDIRTY merge), 2013 (the soft-dirty series as posted).",
        DefaultValueFactory = _ => "modern",
    }.AcceptOnlyFromAmong("modern", "linux-6.12", "2013");

    /// <summary>A duration option's value in ns (SimKernel's <c>Units</c>), or a usage error.</summary>
    public static ulong ParseDurationNs(string text) =>
        SimKernel.Workloads.Units.TryParseDurationNs(text, out ulong ns) is { } error ? throw new UserException(ExitCode.Usage, error) : ns;

    public static ulong ParseAddress(string text) =>
        SimKernel.Workloads.Units.TryParseAddress(text, out ulong v) ? v : throw new UserException(ExitCode.Usage, $"'{text}' is not a hexadecimal address");

    /// <summary>A size option's value in bytes ("64MiB", "16GiB", "4k"), overflow refused.</summary>
    public static ulong ParseSize(string text) =>
        SimKernel.Workloads.Units.TryParse(text, 4096, out ulong b) ? b : throw new UserException(ExitCode.Usage, $"'{text}' is not a size (examples: 64MiB, 16GiB)");
}

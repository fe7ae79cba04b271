using System.CommandLine;

namespace CriuSharp.Cli;

/// <summary>Options shared by several verbs, defined once so their names and help never drift.</summary>
public static class CommonOptions
{
    public static readonly Option<bool> Verbose = new("--verbose", "-v")
    {
        Description = "Print the full exception on failure.",
        Recursive = true,
    };

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
}

using System.CommandLine;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Arch;

namespace CriuSharp.Cli;

/// <summary>--arch and --kernel, turned into a kernel configuration.</summary>
public sealed class KernelOptions
{
    public Option<string> Arch { get; } = CommonOptions.Arch();
    public Option<string> Kernel { get; } = CommonOptions.Kernel();

    public void AddTo(Command c)
    {
        c.Options.Add(Arch);
        c.Options.Add(Kernel);
    }

    /// <summary>An existing machine must have the profile the user asked for explicitly.</summary>
    public void CheckMatches(ParseResult p, SimKernel.Machine.SimMachine m)
    {
        var c = Config(p);
        if (p.GetResult(Arch) is { Implicit: false } && m.Kernel.Arch != c.Arch)
            throw new UserException(ExitCode.BadInput, $"the machine in {m.Directory} is {m.Kernel.Arch.Name}, not {c.Arch.Name}",
                "Use another --machine directory for another architecture.");
        if (p.GetResult(Kernel) is { Implicit: false } && m.Kernel.Version != c.Version)
            throw new UserException(ExitCode.BadInput, $"the machine in {m.Directory} runs kernel profile {m.Kernel.Version.Name}, not {p.GetValue(Kernel)}",
                "Use another --machine directory for another kernel profile.");
    }

    public KernelConfig Config(ParseResult p) => new()
    {
        Arch = ArchProfile.Parse(p.GetValue(Arch)!),
        Version = KernelVersion.Parse(p.GetValue(Kernel)!),
    };
}

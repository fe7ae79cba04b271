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

    public KernelConfig Config(ParseResult p) => new()
    {
        Arch = ArchProfile.Parse(p.GetValue(Arch)!),
        Version = KernelVersion.Parse(p.GetValue(Kernel)!),
    };
}

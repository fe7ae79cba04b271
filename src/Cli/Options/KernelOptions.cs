using System.CommandLine;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Arch;

namespace CriuSharp.Cli;

/// <summary>--arch and --kernel, turned into a kernel configuration.</summary>
public sealed class KernelOptions
{
    public Option<string> Arch { get; } = CommonOptions.Arch();
    public Option<string> Kernel { get; } = CommonOptions.Kernel();

    /// <summary>vm.nr_hugepages of the machine: the boot pool of a new one, a sysctl write on an existing one.</summary>
    public Option<long?> HugePages { get; } = new("--hugepages")
    {
        Description = "Pages in the machine's hugetlb pool (vm.nr_hugepages, pages of the default huge size: 2 MiB on x86_64 and arm64, 16 MiB on ppc64): "
            + "the boot pool of a new machine, or `echo N > /proc/sys/vm/nr_hugepages` on an existing one.",
    };

    /// <param name="c">The command.</param>
    /// <param name="pool">Whether the command works on a machine whose hugetlb pool <c>--hugepages</c> sizes.</param>
    public void AddTo(Command c, bool pool = true)
    {
        c.Options.Add(Arch);
        c.Options.Add(Kernel);
        if (pool)
        {
            c.Options.Add(HugePages);
            c.Validators.Add(r =>
            {
                if (r.GetValue(HugePages) is < 0)
                    r.AddError("--hugepages must be 0 or more");
            });
        }
    }

    /// <summary>
    /// Sizes an existing machine's hugetlb pool when <c>--hugepages</c> was given, as a write to
    /// /proc/sys/vm/nr_hugepages does: the pool grows as far as free memory allows and shrinks by
    /// its free pages only. Says so on <paramref name="err"/> when it holds other than asked.
    /// </summary>
    public void ApplyPool(ParseResult p, SimKernel.Machine.SimMachine m, TextWriter err)
    {
        if (p.GetValue(HugePages) is not long want)
            return;
        var pool = m.Kernel.Hugetlb.Default;
        if (pool.Nr != want)
            pool.SetNr(want);
        if (pool.Nr != want)
            err.WriteLine($"criu-sharp: the hugetlb pool of {m.Directory} holds {pool.Nr} pages of {pool.Size >> 20} MiB, not the {want} asked for "
                + (pool.Nr < want ? "(not enough free physical memory)" : "(pages in use are not freed)"));
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
        HugePages = p.GetResult(HugePages) is null ? 0 : p.GetValue(HugePages) ?? 0,
    };
}

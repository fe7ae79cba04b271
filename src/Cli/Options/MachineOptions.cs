using System.CommandLine;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Cli;

/// <summary>--machine DIR and --wait SECONDS: which machine directory a command works on.</summary>
public sealed class MachineOptions
{
    public Option<string> Machine { get; } = new("--machine", "-m")
    {
        Description = $"Machine directory (default: ${SimMachine.EnvironmentVariable}, else ./.criu-sharp/machine).",
        DefaultValueFactory = _ => SimMachine.DefaultDirectory,
    };

    public Option<double> Wait { get; } = new("--wait")
    {
        Description = "Seconds to wait for another command holding the machine before giving up.",
        DefaultValueFactory = _ => 30,
    };

    public void AddTo(Command c)
    {
        c.Options.Add(Machine);
        c.Options.Add(Wait);
    }

    public string Directory(ParseResult p) => Path.GetFullPath(p.GetValue(Machine)!);

    /// <summary>
    /// --machine /proc names the real host this command runs on (a machine directory is never
    /// called /proc): pre-dump, dump, check and record work on it, nothing else does.
    /// </summary>
    public bool IsRealHost(ParseResult p) => IsRealHostName(p.GetValue(Machine));

    public static bool IsRealHostName(string? machine) => machine is not null && machine.TrimEnd('/') == "/proc";

    /// <summary>The error for a verb that only a simulated machine can do.</summary>
    public static UserException SimulatorOnly(string verb) => new(ExitCode.Unsupported,
        $"'{verb}' needs a simulated machine: --machine /proc is the real host, where only pre-dump, dump and check work",
        "Name a machine directory (restore a real process's images into one with 'restore -D DIR --machine DIR').");

    private TimeSpan WaitTime(ParseResult p) => TimeSpan.FromSeconds(p.GetValue(Wait));

    /// <summary>
    /// Takes the machine's lock through <paramref name="open"/>, telling the user on stderr when
    /// another command holds it, so a wait is never silent (live on a terminal).
    /// </summary>
    private static SimMachine Locked(ParseResult p, string dir, Func<Action<TimeSpan>, SimMachine> open)
    {
        var err = p.InvocationConfiguration.Error;
        bool json = p.Tokens.Any(t => t.Value == "--json");
        using var indicator = new LockWaitIndicator(err, dir, LockWaitIndicator.IsTerminal(err, json));
        return open(indicator.Begin);
    }

    public SimMachine Open(ParseResult p)
    {
        if (IsRealHost(p))
            throw SimulatorOnly(p.CommandResult.Command.Name);
        string dir = Directory(p);
        return Locked(p, dir, waiting => SimMachine.Open(dir, WaitTime(p), waiting));
    }

    /// <summary>
    /// Opens the machine, or creates it when there is none. A machine this call created is removed
    /// again unless <see cref="MachineLease.Keep"/> is called, so a failed command leaves nothing
    /// behind that a later command would take for a machine the user asked for.
    /// </summary>
    public MachineLease OpenOrCreate(ParseResult p, KernelConfig config, KernelOptions? chosen = null)
    {
        if (IsRealHost(p))
            throw SimulatorOnly(p.CommandResult.Command.Name);
        string dir = Directory(p);
        if (SimMachine.Exists(dir))
        {
            var m = Locked(p, dir, waiting => SimMachine.Open(dir, WaitTime(p), waiting));
            try
            {
                chosen?.CheckMatches(p, m);
                chosen?.ApplyPool(p, m, p.InvocationConfiguration.Error);
            }
            catch
            {
                m.Dispose();
                throw;
            }
            return new MachineLease(m, null, false);
        }
        // The topmost directory this call creates: removed whole if the command fails.
        string? created = null;
        for (var d = new DirectoryInfo(dir); d is not null && !d.Exists; d = d.Parent)
            created = d.FullName;
        return new MachineLease(Locked(p, dir, waiting => SimMachine.Create(dir, config, WaitTime(p), waiting)), created, true);
    }
}

/// <summary>A machine opened or created by a command; see <see cref="MachineOptions.OpenOrCreate"/>.</summary>
public sealed class MachineLease(SimMachine machine, string? createdDirectory, bool created) : IDisposable
{
    private bool _keep = !created;

    public SimMachine Machine { get; } = machine;

    /// <summary>The command succeeded: a machine it created stays.</summary>
    public void Keep() => _keep = true;

    public void Dispose()
    {
        if (!_keep)
        {
            // Removed while the lock is still held, so no other command sees a half-made machine.
            try
            {
                if (createdDirectory is not null)
                    System.IO.Directory.Delete(createdDirectory, recursive: true);
                else
                    foreach (var f in System.IO.Directory.EnumerateFiles(Machine.Directory))
                        if (Path.GetFileName(f) is SimMachine.StateFileName or SimMachine.FramesFileName or SimMachine.LockFileName
                            || Path.GetFileName(f).StartsWith("frames.journal.", StringComparison.Ordinal)
                            || Path.GetFileName(f).StartsWith(SimMachine.StateFileName, StringComparison.Ordinal)
                            || (Path.GetFileName(f).StartsWith("swap.", StringComparison.Ordinal) && f.EndsWith(".dat", StringComparison.Ordinal)))
                            File.Delete(f);
            }
            catch (IOException)
            {
                // Best effort: the command's own error is what the user needs to see.
            }
        }
        Machine.Dispose();
    }
}

/// <summary>-t/--tree PID, as CRIU names it.</summary>
public static class PidOption
{
    public static Option<int> Create(bool required = true) => new("--tree", "-t")
    {
        Description = "Process id.",
        Required = required,
    };

    public static SimTask Resolve(Kernel k, int pid) =>
        k.FindTask(pid) is { State: not TaskState.Dead } t
            ? t
            : throw new UserException(ExitCode.BadInput, $"no process {pid} on this machine", "List them with 'criu-sharp ps'.");
}

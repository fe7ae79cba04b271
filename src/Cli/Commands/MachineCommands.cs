using System.CommandLine;
using System.Text.Json;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Workloads;
using Spectre.Console;

namespace CriuSharp.Cli;

/// <summary>spawn, run, ps, kill and verify: driving the simulated host step by step.</summary>
public static class MachineCommands
{
    public static Command Spawn()
    {
        var file = new Argument<FileInfo>("file") { Description = "Workload file (JSON; see samples/README.md)." };
        var kernel = new KernelOptions();
        var machine = new MachineOptions();
        var memory = new Option<string>("--memory") { Description = "Physical memory of a new machine (e.g. 16GiB).", DefaultValueFactory = _ => "16GiB" };
        var json = CommonOptions.Json();
        var cmd = new Command("spawn", "Start the processes a workload file describes (creating the machine on first use); prints their pids.");
        cmd.Arguments.Add(file);
        kernel.AddTo(cmd);
        machine.AddTo(cmd);
        cmd.Options.Add(memory);
        cmd.Options.Add(json);
        cmd.SetAction(p =>
        {
            var f = p.GetValue(file)!;
            if (!f.Exists)
                throw new UserException(ExitCode.BadInput, $"{f.FullName}: no such file");
            var config = kernel.Config(p) with { MemoryBytes = (long)CommonOptions.ParseSize(p.GetValue(memory)!) };
            using var lease = machine.OpenOrCreate(p, config, kernel);
            var m = lease.Machine;
            var tasks = TerminalProgress.Run(p.GetValue(json), "spawning", () => WorkloadApi.Spawn(m.Kernel, f.FullName));
            m.Save();
            lease.Keep();
            var o = p.InvocationConfiguration.Output;
            if (p.GetValue(json))
                o.WriteLine(JsonSerializer.Serialize(new { machine = m.Directory, pids = tasks.Select(t => t.Pid) }, JsonOut.Options));
            else
                o.WriteLine(string.Join(' ', tasks.Select(t => t.Pid)));
            return 0;
        });
        return cmd;
    }

    public static Command Run()
    {
        var forOpt = new Option<string?>("--for") { Description = "Virtual time to run, e.g. 2s, 500ms." };
        var steps = new Option<long?>("--steps") { Description = "Run exactly N operations of every program instead (no virtual time passes)." };
        var machine = new MachineOptions();
        var json = CommonOptions.Json();
        var cmd = new Command("run", "Let the machine run: every running program executes at its rate in virtual time.");
        cmd.Options.Add(forOpt);
        cmd.Options.Add(steps);
        machine.AddTo(cmd);
        cmd.Options.Add(json);
        cmd.Validators.Add(r =>
        {
            bool hasFor = r.GetResult(forOpt) is not null, hasSteps = r.GetResult(steps) is not null;
            if (hasFor == hasSteps)
                r.AddError("give exactly one of --for DURATION or --steps N");
        });
        cmd.SetAction(p =>
        {
            using var m = machine.Open(p);
            LazyPagesCommand.RefuseWhileIncomplete(m);
            ulong start = m.Kernel.UptimeNs;
            if (p.GetValue(steps) is long n)
            {
                if (n < 0)
                    throw new UserException(ExitCode.Usage, "--steps must not be negative");
                m.RunSteps(n);
            }
            else
            {
                ulong ns = CommonOptions.ParseDurationNs(p.GetValue(forOpt)!);
                if (RunWithProgress(m, ns, p.GetValue(json)))
                    p.InvocationConfiguration.Error.WriteLine($"criu-sharp: interrupted after {(m.Kernel.UptimeNs - start) / 1e9:0.0##} s of {ns / 1e9:0.0##} s; the machine is saved as it is");
            }
            m.Save();
            var o = p.InvocationConfiguration.Output;
            var alive = m.Kernel.Tasks.Count(t => t.Alive);
            if (p.GetValue(json))
                o.WriteLine(JsonSerializer.Serialize(new { uptime_ns = m.Kernel.UptimeNs, ran_ns = m.Kernel.UptimeNs - start, alive }, JsonOut.Options));
            else
                o.WriteLine($"uptime {m.Kernel.UptimeNs / 1e9:0.000} s, {alive} process(es) alive");
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// Runs in 100 ms steps of virtual time, with a progress bar on a terminal only. SIGINT (Ctrl-C)
    /// stops at the end of the current step, so the machine is saved with the time that did run.
    /// </summary>
    private static bool RunWithProgress(SimKernel.Machine.SimMachine m, ulong ns, bool json)
    {
        const ulong step = 100_000_000;
        bool interrupted = false;
        void OnCancel(object? s, ConsoleCancelEventArgs e)
        {
            e.Cancel = true;
            Volatile.Write(ref interrupted, true);
        }
        Console.CancelKeyPress += OnCancel;
        try
        {
            if (json || Console.IsOutputRedirected || Console.IsErrorRedirected || ns <= step)
            {
                for (ulong done = 0; done < ns && !Volatile.Read(ref interrupted); done += step)
                    m.Advance(Math.Min(step, ns - done));
                return interrupted;
            }
            var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
            console.Progress().Start(ctx =>
            {
                var task = ctx.AddTask("running", maxValue: ns / 1e6);
                for (ulong done = 0; done < ns && !Volatile.Read(ref interrupted); done += step)
                {
                    m.Advance(Math.Min(step, ns - done));
                    task.Value = Math.Min(ns, done + step) / 1e6;
                }
            });
            return interrupted;
        }
        finally
        {
            Console.CancelKeyPress -= OnCancel;
        }
    }

    public static Command Ps()
    {
        var machine = new MachineOptions();
        var json = CommonOptions.Json();
        var cmd = new Command("ps", "List the processes of the machine.");
        machine.AddTo(cmd);
        cmd.Options.Add(json);
        cmd.SetAction(p =>
        {
            using var m = machine.Open(p);
            var rows = m.Kernel.Tasks.Select(t => new
            {
                pid = t.Pid,
                tgid = t.Tgid,
                ppid = t.Ppid,
                state = t.State.ToString().ToLowerInvariant(),
                comm = t.Comm,
                rss_kb = t.RssPages * m.Kernel.Arch.PageSize / 1024,
                swap_kb = t.SwapPages * m.Kernel.Arch.PageSize / 1024,
                term_signal = t.TermSignal,
            }).ToList();
            var o = p.InvocationConfiguration.Output;
            if (p.GetValue(json))
            {
                o.WriteLine(JsonSerializer.Serialize(new { uptime_ns = m.Kernel.UptimeNs, arch = m.Kernel.Arch.Name, kernel = m.Kernel.Version.Name, processes = rows }, JsonOut.Options));
                return 0;
            }
            o.WriteLine($"{"PID",7} {"PPID",7} {"STATE",-8} {"RSS kB",10} {"SWAP kB",9}  COMM");
            foreach (var r in rows)
                o.WriteLine($"{r.pid,7} {r.ppid,7} {r.state,-8} {r.rss_kb,10} {r.swap_kb,9}  {r.comm}{(r.tgid != r.pid ? $" (thread of {r.tgid})" : "")}{(r.term_signal != 0 ? $" (killed by signal {r.term_signal})" : "")}");
            return 0;
        });
        return cmd;
    }

    public static Command Kill()
    {
        var pid = PidOption.Create();
        var machine = new MachineOptions();
        var signal = new Option<string>("--signal", "-s")
        {
            Description = "Signal, as kill(1): KILL (default; the memory is released), STOP (the process stops, as dump/restore --leave-stopped leave it) or CONT (a stopped process runs again).",
            DefaultValueFactory = _ => "KILL",
        };
        var cmd = new Command("kill", "Send a signal to a process: SIGKILL by default, or SIGSTOP / SIGCONT (-s).");
        cmd.Options.Add(pid);
        cmd.Options.Add(signal);
        machine.AddTo(cmd);
        cmd.SetAction(p =>
        {
            int sig = SignalNumber(p.GetValue(signal)!);
            using var m = machine.Open(p);
            var t = PidOption.Resolve(m.Kernel, p.GetValue(pid));
            switch (sig)
            {
                case SimTask.SIGKILL:
                    m.Kernel.Exit(t, 0, SimTask.SIGKILL);
                    m.Kernel.Reap(t);
                    break;
                case SigStop:
                    m.Kernel.Stop(t.Pid, wholeTree: false);
                    break;
                default:
                    m.Kernel.Continue(t.Pid);
                    break;
            }
            m.Save();
            return 0;
        });
        return cmd;
    }

    private const int SigCont = 18, SigStop = 19;

    /// <summary>kill(1)'s spellings of the signals the simulated processes take: KILL, SIGKILL, 9 (x86 numbering, signal(7)).</summary>
    internal static int SignalNumber(string text)
    {
        string s = text.Trim().ToUpperInvariant();
        if (s.StartsWith("SIG", StringComparison.Ordinal))
            s = s[3..];
        return s switch
        {
            "KILL" or "9" => SimTask.SIGKILL,
            "STOP" or "19" => SigStop,
            "CONT" or "18" => SigCont,
            _ => throw new UserException(ExitCode.Usage, $"--signal '{text}': not a signal a simulated process takes (KILL, STOP or CONT)", "Try 'criu-sharp kill --help'."),
        };
    }

    public static Command Verify()
    {
        var pid = PidOption.Create(required: false);
        var machine = new MachineOptions();
        var json = CommonOptions.Json();
        var cmd = new Command("verify", "Run the workload's self-check of its own memory (all programs, or -t PID); exit 1 on a bad page.");
        cmd.Options.Add(pid);
        machine.AddTo(cmd);
        cmd.Options.Add(json);
        cmd.SetAction(p =>
        {
            using var m = machine.Open(p);
            LazyPagesCommand.RefuseWhileIncomplete(m);
            var tasks = p.GetResult(pid) is null
                ? m.Kernel.Tasks.Where(t => t.Alive && WorkloadApi.HasProgram(t)).ToList()
                : [PidOption.Resolve(m.Kernel, p.GetValue(pid))];
            // Nothing verified is not a success: a script checking a restore must not pass on an empty machine.
            if (tasks.Count == 0)
                throw new UserException(ExitCode.CheckFailed, $"nothing to verify: no live process on {m.Directory} runs a workload program",
                    "List the processes with 'criu-sharp ps'.");
            var reports = tasks.Select(WorkloadApi.Verify).ToList();
            var o = p.InvocationConfiguration.Output;
            if (p.GetValue(json))
                o.WriteLine(JsonSerializer.Serialize(new { machine = m.Directory, ok = reports.All(r => r.Ok), processes = reports }, JsonOut.Options));
            else
                foreach (var r in reports)
                    o.WriteLine(r.Ok
                        ? $"{r.Pid} {r.Behaviour}: ok ({r.PagesChecked} pages checked)"
                        : $"{r.Pid} {r.Behaviour}: BAD at 0x{r.FirstBadAddress:x}: {r.Detail}");
            return reports.All(r => r.Ok) ? 0 : (int)ExitCode.CheckFailed;
        });
        return cmd;
    }
}

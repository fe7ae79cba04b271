using System.CommandLine;
using System.Text.Json;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.Traces;

namespace CriuSharp.Cli;

/// <summary>criu-sharp record: a trace of a process tree as a chain of pre-dumps plus an index (samples/README.md).</summary>
public static class RecordCommand
{
    public static Command Create()
    {
        var pid = PidOption.Create();
        var output = new Option<string>("--output", "-o") { Description = "Trace directory to create (must not exist, or be empty).", Required = true };
        var interval = new Option<string>("--interval") { Description = "Time between samples (a pre-dump each), e.g. 50ms.", DefaultValueFactory = _ => "50ms" };
        var forOpt = new Option<string>("--for") { Description = "How long to record, e.g. 10s.", DefaultValueFactory = _ => "10s" };
        var tracker = new Option<string>("--tracker") { Description = "Dirty-page tracker of the pre-dumps: auto, soft-dirty, pagemap-scan, uffd-wp, content, none (auto on a host that tracks nothing: content).", DefaultValueFactory = _ => "auto" }
            .AcceptOnlyFromAmong("auto", "soft-dirty", "pagemap-scan", "uffd-wp", "content", "none");
        var compress = new Option<string>("--compress") { Description = "Page compression of the trace's images: lz4, zstd, none.", DefaultValueFactory = _ => "lz4" }
            .AcceptOnlyFromAmong("lz4", "zstd", "none");
        var json = CommonOptions.Json();
        var machine = new MachineOptions();
        var cmd = new Command("record",
            $"Record a process tree: a pre-dump every --interval for --for, into a chain of CRIU image directories plus an index (--machine /proc for the real host).");
        foreach (var o in new Option[] { pid, output, interval, forOpt, tracker, compress, json })
            cmd.Options.Add(o);
        machine.AddTo(cmd);
        cmd.SetAction(p =>
        {
            var options = new RecordOptions
            {
                Pid = p.GetValue(pid),
                Output = Path.GetFullPath(p.GetValue(output)!),
                IntervalNs = CommonOptions.ParseDurationNs(p.GetValue(interval)!),
                ForNs = CommonOptions.ParseDurationNs(p.GetValue(forOpt)!),
                Tracker = TrackerNames.Parse(p.GetValue(tracker)!),
                PageStore = p.GetValue(compress) switch
                {
                    "none" => PageStoreOptions.Raw,
                    "zstd" => PageStoreOptions.Zstd(),
                    _ => PageStoreOptions.Lz4(),
                },
            };
            if (options.IntervalNs == 0)
                throw new UserException(ExitCode.Usage, "--interval must be longer than 0");
            bool asJson = p.GetValue(json);
            var err = p.InvocationConfiguration.Error;
            // Progress on a terminal only: one rewritten line on stderr per sample.
            bool tty = !asJson && !Console.IsErrorRedirected && ReferenceEquals(err, Console.Error);
            ulong planned = options.ForNs / options.IntervalNs + 1;
            Action<int, TraceSample>? progress = tty
                ? (i, s) => err.Write($"\rsample {i + 1}/{planned}: {s.PagesWritten} pages written, frozen {s.FrozenUs} us   ")
                : null;
            RecordResult result;
            if (machine.IsRealHost(p))
            {
                // The host this command runs on: the same recorder, a real kernel, wall-clock time.
                using var host = new HostKernel.LinuxHost();
                if (host.FindTask(options.Pid) is not { Alive: true })
                    throw new UserException(ExitCode.BadInput, $"no process {options.Pid} on this host");
                // As pre-dump on the host: where the kernel tracks no writes, auto digests page contents.
                result = Recorder.Record(new RecordTarget(host, HostKernel.LinuxHost.MachineName, RealTime: true),
                    options with { AutoFallback = TrackerKind.Content }, progress);
            }
            else
            {
                using var m = machine.Open(p);
                PidOption.Resolve(m.Kernel, options.Pid);
                result = Recorder.Record(RecordTarget.Simulated(m, m.Directory), options, progress);
                m.Save();
            }
            if (tty)
                err.WriteLine();
            foreach (var w in result.Warnings)
                err.WriteLine($"criu-sharp: warning: {w.Message}");
            Print(p.InvocationConfiguration.Output, result, asJson);
            return 0;
        });
        return cmd;
    }

    private static void Print(TextWriter o, RecordResult r, bool json)
    {
        var ix = r.Index;
        if (json)
        {
            o.WriteLine(JsonSerializer.Serialize(new
            {
                trace = r.Path,
                pid = ix.Pid,
                comm = ix.Comm,
                machine = ix.Machine,
                tracker = ix.Tracker,
                samples = r.Samples,
                ended_early = ix.EndedEarly,
                end_reason = ix.EndReason,
                interval_ns = ix.IntervalNs,
                max_frozen_us = r.MaxFrozenUs,
                bytes_stored = r.BytesStored,
                pages_written = ix.Samples.Select(s => s.PagesWritten),
                frozen_us = ix.Samples.Select(s => s.FrozenUs),
            }, JsonOut.Options));
            return;
        }
        ulong changed = (ulong)ix.Samples.Skip(1).Sum(s => (decimal)s.PagesWritten);
        o.WriteLine($"{r.Path}: {r.Samples} samples of pid {ix.Pid} ({ix.Comm}) every {ix.IntervalNs / 1e6:0.###} ms, " +
                    $"{ix.Samples[0].PagesWritten} pages in the first, {changed} changed after, {r.BytesStored} bytes stored ({ix.Tracker}, {ix.Compression})");
        o.WriteLine($"longest freeze: {r.MaxFrozenUs} us (one per sample)");
        if (ix.EndedEarly)
            o.WriteLine($"ended early: {ix.EndReason}");
    }
}

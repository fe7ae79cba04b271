using System.CommandLine;
using System.Text.Json;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel.Machine;

namespace CriuSharp.Cli;

/// <summary>pre-dump, dump and restore with CRIU's names and meanings.</summary>
public static class CheckpointCommands
{
    internal sealed class DumpArgs
    {
        public readonly Option<int> Pid = PidOption.Create();
        public readonly Option<string> Dir = new("--images-dir", "-D") { Description = "Directory for the image files (default: the current directory, as CRIU's).", DefaultValueFactory = _ => "." };
        public readonly Option<string?> Prev = new("--prev-images-dir") { Description = "Parent image set, relative to the images directory (CRIU's rule); written as the 'parent' link." };
        public readonly Option<bool> TrackMem = new("--track-mem") { Description = "Reset dirty tracking after collecting, so the next dump writes only changes (implied by pre-dump)." };
        public readonly Option<bool> AutoDedup = new("--auto-dedup") { Description = "Remove from the parent images the pages this dump supersedes." };
        public readonly Option<string> Tracker = new Option<string>("--tracker") { Description = "Dirty-page tracker: auto, soft-dirty, pagemap-scan, uffd-wp, content (page digests, any kernel), none.", DefaultValueFactory = _ => "auto" }
            .AcceptOnlyFromAmong("auto", "soft-dirty", "pagemap-scan", "uffd-wp", "content", "none");
        public readonly Option<string> Compress = new Option<string>("--compress") { Description = "Page compression: lz4, zstd, or none (CRIU's raw pages-N.img).", DefaultValueFactory = _ => "lz4" }
            .AcceptOnlyFromAmong("lz4", "zstd", "none");
        public readonly Option<int> BlockKiB = new("--block-size") { Description = "Compression block size in KiB, 4 (one page) to 256.", DefaultValueFactory = _ => 64 };
        public readonly Option<bool> DisplayStats = new("--display-stats") { Description = "Print the dump statistics (they are always saved in stats-dump)." };
        public readonly Option<bool> Json = CommonOptions.Json();
        public readonly MachineOptions Machine = new();
        public readonly Option<bool> PageServer = new("--page-server") { Description = "Send pagemaps and pages to a page server (--address, --port); the other images stay in -D." };
        public readonly PageServerCliOptions Net = new();
        public readonly Option<int> Timeout = new("--timeout")
        {
            Description = "Seconds that collecting and freezing the tree may take (CRIU's --timeout, default 10; 0: no limit); a dump that takes longer fails and the tree is thawed.",
            DefaultValueFactory = _ => (int)DumpOptions.DefaultTimeoutSeconds,
        };
        public readonly Option<string> FreezeCost = new("--freeze-cost")
        {
            Description = "Cost model: seizing and freezing one task, in the machine's virtual time (as migrate's --freeze-cost).",
            DefaultValueFactory = _ => $"{CostModel.Default.FreezeNsPerTask / 1000}us",
        };

        public readonly Option<string> GhostLimit = new("--ghost-limit")
        {
            Description = "Largest file unlinked while mapped whose contents the dump keeps in a ghost-file image (CRIU's --ghost-limit, default 1MiB); a larger one fails the dump.",
            DefaultValueFactory = _ => "1MiB",
        };

        public readonly Option<bool> Elide = new("--elide-unchanged")
        {
            Description = "Record pages the tracker reports written but whose contents equal the parent chain's as in-parent (PE_PARENT) instead of writing them, as migrate does. Compares with the parent's page-digests-PID.img, which every dump with this (or --delta) on writes at 8 bytes per page its pagemap covers — more than elision saved on samples/hotcold-trace.json (README), hence off by default here (migrate keeps its history in memory and has it on). CRIU restores such images.",
        };
        public readonly Option<bool> Delta = new("--delta") { Description = "Write re-dirtied pages as XBZRLE-style deltas against their version in the parent chain (read back from its pages) when smaller. An image extension: criu-sharp restores such images, CRIU cannot. Not with --page-server (the bases are on the server)." };
        public readonly Option<string> DeltaCache = new("--delta-cache") { Description = "With --delta: at most this many bytes of delta bases read from the parent chain (QEMU's default xbzrle-cache-size); written pages beyond it go whole.", DefaultValueFactory = _ => "64MiB" };

        public void AddTo(Command c)
        {
            foreach (var o in new Option[] { Pid, Dir, Prev, TrackMem, AutoDedup, Tracker, Compress, BlockKiB, DisplayStats, Json, PageServer, Timeout, FreezeCost, GhostLimit, Elide, Delta, DeltaCache })
                c.Options.Add(o);
            Net.AddClientTo(c);
            Machine.AddTo(c);
        }

        public DumpOptions Options(ParseResult p)
        {
            int kib = p.GetValue(BlockKiB);
            if (kib < 4 || kib > 256 || kib % 4 != 0)
                throw new UserException(ExitCode.Usage, $"--block-size {kib}: must be a multiple of 4 from 4 to 256 (KiB)");
            var store = p.GetValue(Compress) switch
            {
                "none" => PageStoreOptions.Raw,
                "zstd" => PageStoreOptions.Zstd(kib / 4),
                _ => PageStoreOptions.Lz4(kib / 4),
            };
            // On the real host the pages are read and compressed by every core (the store writes
            // the same bytes for any thread count); a simulated kernel's pages are one thread's
            // work, its costs being virtual time.
            if (Machine.IsRealHost(p) && store.Compression != PageCompression.None)
                store = store with { Parallelism = Environment.ProcessorCount };
            bool elide = p.GetValue(Elide), delta = p.GetValue(Delta);
            if (delta && p.GetValue(PageServer))
                throw new UserException(ExitCode.Usage, "--delta with --page-server: the delta bases are the parent chain's pages, which are on the page server, not here",
                    "Use --delta with local images (--prev-images-dir), or migrate --transport tcp --delta, whose source keeps the bases.");
            long cacheBytes = 0;
            if (delta)
            {
                string text = p.GetValue(DeltaCache)!;
                ulong size = CommonOptions.ParseSize(text);
                if (size < PageGeometry.PageSize || size > (1UL << 40))
                    throw new UserException(ExitCode.Usage, $"--delta-cache '{text}': must be from 4KiB to 1TiB");
                cacheBytes = (long)size;
            }
            int timeout = p.GetValue(Timeout);
            if (timeout < 0)
                throw new UserException(ExitCode.Usage, $"--timeout {timeout}: must be a number of seconds, 0 or more (0: no limit)");
            return new DumpOptions
            {
                Pid = p.GetValue(Pid),
                ImagesDir = Path.GetFullPath(p.GetValue(Dir)!),
                PrevImagesDir = p.GetValue(Prev),
                TrackMem = p.GetValue(TrackMem),
                AutoDedup = p.GetValue(AutoDedup),
                TimeoutSeconds = (uint)timeout,
                GhostLimit = checked((long)CommonOptions.ParseSize(p.GetValue(GhostLimit)!)),
                Cost = CostModel.Default with { FreezeNsPerTask = CommonOptions.ParseDurationNs(p.GetValue(FreezeCost)!) },
                Tracker = TrackerNames.Parse(p.GetValue(Tracker)!),
                PageStore = store,
                // Each invocation is a process of its own: the history is rebuilt from the parent chain.
                History = elide || delta ? SentPages.FromImages(elide, cacheBytes) : null,
                PageServer = p.GetValue(PageServer)
                    ? Net.Endpoint(p) with { WireCompression = p.GetValue(Net.Compress) && store.Compression != PageCompression.None ? store : null }
                    : null,
            };
        }
    }

    public static Command PreDump() => DumpVerb("pre-dump",
        "Save the memory changed since the previous pre-dump while the tree keeps running (CRIU's pre-dump).", preDump: true);

    public static Command Dump() => DumpVerb("dump",
        "Checkpoint a process tree: freeze it, write every image, then kill it (or --leave-running).", preDump: false);

    private static Command DumpVerb(string name, string description, bool preDump)
    {
        var a = new DumpArgs();
        var leaveRunning = new Option<bool>("--leave-running", "-R") { Description = "Leave the tasks running after the dump." };
        var leaveStopped = new Option<bool>("--leave-stopped", "-s") { Description = "Leave the tasks stopped (SIGSTOP) after the dump instead of killing them; 'kill -s CONT' resumes them." };
        var preDumpMode = new Option<string>("--pre-dump-mode")
        {
            Description = "splice (default, as CRIU): pages are collected while the tree is frozen; read: only the pagemap while frozen, the pages are copied (process_vm_readv) after the thaw — shorter frozen time, unreadable (PROT_NONE) VMAs skipped.",
            DefaultValueFactory = _ => "splice",
        }.AcceptOnlyFromAmong("splice", "read");
        var lazyPages = new Option<bool>("--lazy-pages") { Description = "Keep private anonymous pages on the source (PE_LAZY in the pagemap, no bytes) and serve them with PS_IOV_GET on --address/--port to one 'criu-sharp lazy-pages' daemon until it has them all (prints 'listening on ADDRESS:PORT' after the dump)." };
        var cmd = new Command(name, description);
        a.AddTo(cmd);
        if (!preDump)
        {
            cmd.Options.Add(leaveRunning);
            cmd.Options.Add(leaveStopped);
            cmd.Options.Add(lazyPages);
        }
        else
            cmd.Options.Add(preDumpMode);
        cmd.SetAction(p =>
        {
            if (!preDump && p.GetValue(leaveRunning) && p.GetValue(leaveStopped))
                throw new UserException(ExitCode.Usage, "--leave-running and --leave-stopped exclude each other: the tree is left either running or stopped", $"Try 'criu-sharp {name} --help'.");
            var options = a.Options(p) with
            {
                LeaveRunning = !preDump && p.GetValue(leaveRunning),
                LeaveStopped = !preDump && p.GetValue(leaveStopped),
                PreDumpMode = preDump && p.GetValue(preDumpMode) == "read" ? PreDumpMode.Read : PreDumpMode.Splice,
            };
            if (!preDump && p.GetValue(lazyPages))
            {
                if (a.Machine.IsRealHost(p))
                    throw new UserException(ExitCode.Unsupported, "--lazy-pages with --machine /proc: a real process's pages cannot be kept for later (it is never killed)");
                return LazyPagesCommand.DumpAndServe(p, a, options);
            }
            if (a.Machine.IsRealHost(p))
                return DumpRealHost(p, a, options, preDump);
            var log = CliLog.Current;
            using var m = a.Machine.Open(p);
            PidOption.Resolve(m.Kernel, options.Pid);
            log.Write(CliLog.Info, $"{(preDump ? "Pre-dumping" : "Dumping")} processes (pid: {options.Pid}) into {options.ImagesDir}" +
                $"{(options.PrevImagesDir is null ? "" : $", parent {options.PrevImagesDir}")}, tracker {p.GetValue(a.Tracker)}, compression {p.GetValue(a.Compress)}");
            var result = TerminalProgress.Run(p.GetValue(a.Json), preDump ? "pre-dumping" : "dumping",
                () => preDump ? Criu.PreDump(m.AsKernelApi(), options) : Criu.Dump(m.AsKernelApi(), options));
            m.Save();
            foreach (var w in result.Warnings)
            {
                log.Write(CliLog.Warn, w.Message);
                p.InvocationConfiguration.Error.WriteLine($"criu-sharp: warning: {w.Message}");
            }
            var st = result.Stats;
            log.Write(CliLog.Info, $"Tracker {st.Tracker}: {st.PagesScanned} pages scanned, {st.PagesWritten} written, {st.PagesSkippedParent} in parent; frozen {st.FrozenTime} us");
            log.Write(CliLog.Info, $"{(preDump ? "Pre-dump" : "Dump")} finished successfully");
            Report(p.InvocationConfiguration.Output, p.InvocationConfiguration.Error, result, options.ImagesDir, p.GetValue(a.Json), p.GetValue(a.DisplayStats));
            return 0;
        });
        return cmd;
    }

    /// <summary>
    /// --machine /proc: the process tree of this machine. Its memory is read, never written; the
    /// tree is frozen while pages are collected and always thawed (a dump never kills it).
    /// </summary>
    private static int DumpRealHost(ParseResult p, DumpArgs a, DumpOptions options, bool preDump)
    {
        var err = p.InvocationConfiguration.Error;
        bool wasLeaveRunning = options.LeaveRunning;
        // A real process is never killed: a dump leaves it running, or stopped if asked.
        options = options with { LeaveRunning = !options.LeaveStopped, AutoFallback = TrackerKind.Content, StrictTracker = true };
        // CRIU's --timeout bounds the freezer's wait too; 0 still gives it 10 s (criu/seize.c).
        using var host = new HostKernel.LinuxHost
        {
            FreezeTimeout = options.TimeoutSeconds == 0 ? HostKernel.Freezer.DefaultTimeout : TimeSpan.FromSeconds(options.TimeoutSeconds),
        };
        if (host.FindTask(options.Pid) is null)
            throw new UserException(ExitCode.ProcessGone, $"no process {options.Pid} on this machine");
        DumpResult result;
        try
        {
            result = preDump ? Criu.PreDump(host, options) : Criu.Dump(host, options);
        }
        catch (Exception e) when (RealHostCode(e) is ExitCode code)
        {
            string incomplete = Directory.Exists(Path.Combine(options.ImagesDir)) && File.Exists(Path.Combine(options.ImagesDir, ImageNames.IncompleteMarker))
                ? $"; {options.ImagesDir} is left marked incomplete" : "";
            throw new UserException(code, (code == ExitCode.ProcessGone ? $"process {options.Pid} exited during the {(preDump ? "pre-dump" : "dump")}" : e.Message) + incomplete,
                code == ExitCode.PermissionDenied ? "Run as the process's owner or as root (ptrace access mode PTRACE_MODE_ATTACH_REALCREDS)." : null, e);
        }
        if (!preDump && options.LeaveStopped)
            err.WriteLine($"criu-sharp: the dump left the tree of {options.Pid} stopped (SIGSTOP); 'kill -CONT {options.Pid}' resumes it");
        else if (!preDump && !wasLeaveRunning)
            err.WriteLine("criu-sharp: note: a real process is never killed: the dump left it running (as --leave-running)");
        err.WriteLine($"criu-sharp: froze the tree with {(host.LastFreezeMethod == HostKernel.FreezeMethod.CgroupFreezer ? "the cgroup v1 freezer" : "SIGSTOP/SIGCONT")}"
            + (host.RegistersUnavailable is null ? ", registers read with ptrace" : ""));
        foreach (var w in result.Warnings)
            err.WriteLine($"criu-sharp: warning: {w.Message}");
        Report(p.InvocationConfiguration.Output, err, result, options.ImagesDir, p.GetValue(a.Json), p.GetValue(a.DisplayStats));
        return 0;
    }

    /// <summary>
    /// Images of a real process map the host's files (libraries, the executable): the simulated
    /// machine gets a copy of each one it lacks, read from the host now.
    /// </summary>
    private static void ImportHostFiles(SimKernel.Machine.SimMachine m, string images, TextWriter err)
    {
        foreach (var (path, size) in Criu.RealHostFiles(images))
        {
            if (m.Kernel.Fs.Lookup(path) is not null)
                continue;
            if (!File.Exists(path))
                throw new UserException(ExitCode.BadInput, $"the images map {path}, which is neither in the machine nor on this host");
            var bytes = File.ReadAllBytes(path);
            if (size != 0 && (ulong)bytes.LongLength != size)
                err.WriteLine($"criu-sharp: warning: {path} is {bytes.LongLength} bytes now, {size} when dumped");
            m.Kernel.Fs.Create(path, bytes);
        }
    }

    /// <summary>The exit code of a real-host failure: the process vanished, or access was refused.</summary>
    private static ExitCode? RealHostCode(Exception e)
    {
        for (Exception? x = e; x is not null; x = x.InnerException)
            if (x is KernelException k)
                return k.Errno switch
                {
                    Errno.ESRCH or Errno.ENOENT => ExitCode.ProcessGone,
                    Errno.EPERM or Errno.EACCES => ExitCode.PermissionDenied,
                    Errno.ETIMEDOUT => ExitCode.Timeout,
                    _ => null,
                };
        return null;
    }

    internal static void Report(TextWriter o, TextWriter err, DumpResult r, string dir, bool json, bool display)
    {
        var s = r.Stats;
        if (json)
        {
            o.WriteLine(JsonSerializer.Serialize(new { images_dir = dir, pids = r.Pids, tracker = TrackerNames.Name(r.Tracker), stats = JsonOut.Stats(s), warnings = r.Warnings.Select(w => w.Message) }, JsonOut.Options));
            // Both were asked for: the JSON stays alone on stdout, the stats go to stderr.
            if (display)
                DisplayStats(err, s);
            return;
        }
        if (!display)
        {
            o.WriteLine($"{dir}: {s.PagesWritten} pages written, {s.PagesSkippedParent} in parent, {s.BytesCompressed} bytes stored ({s.Tracker}, {s.Compression})");
            return;
        }
        DisplayStats(o, s);
    }

    private static void DisplayStats(TextWriter o, DumpStats s)
    {
        // criu/stats.c display_stats wording, then ours.
        o.WriteLine("Displaying dump stats:");
        o.WriteLine($"Freezing time: {s.FreezingTime} us");
        o.WriteLine($"Frozen time: {s.FrozenTime} us");
        o.WriteLine($"Memory dump time: {s.MemdumpTime} us");
        o.WriteLine($"Memory write time: {s.MemwriteTime} us");
        o.WriteLine($"Memory pages scanned: {s.PagesScanned} (0x{s.PagesScanned:x})");
        o.WriteLine($"Memory pages skipped from parent: {s.PagesSkippedParent} (0x{s.PagesSkippedParent:x})");
        o.WriteLine($"Memory pages written: {s.PagesWritten} (0x{s.PagesWritten:x})");
        o.WriteLine($"Lazy memory pages: {s.PagesLazy} (0x{s.PagesLazy:x})");
        o.WriteLine($"Zero pages skipped: {s.ZeroPagesSkipped}");
        o.WriteLine($"Bytes raw / stored: {s.BytesRaw} / {s.BytesCompressed} ({s.Compression})");
        o.WriteLine($"Pages stored raw: {s.PagesStoredRaw}");
        o.WriteLine($"Tracker: {s.Tracker}");
        if (s.Delta is { } d)
        {
            o.WriteLine($"Pages elided: {d.PagesElided} (no parent digest: {d.PagesNoDigest})");
            o.WriteLine($"Pages as deltas: {d.PagesDelta} ({d.DeltaBytes} bytes; cache {d.CacheHits} hits, {d.CacheMisses} misses, {d.Overflows} overflows; {d.BytesSaved} bytes saved)");
        }
    }

    public static Command Restore()
    {
        var dir = new Option<string>("--images-dir", "-D") { Description = "Image directory of a full dump (default: the current directory, as CRIU's).", DefaultValueFactory = _ => "." };
        var machine = new MachineOptions();
        var kernel = new KernelOptions();
        var displayStats = new Option<bool>("--display-stats") { Description = "Print the restore statistics (always saved in stats-restore)." };
        var noVerify = new Option<bool>("--no-verify") { Description = "Skip comparing each restored VMA with the checksum recorded at dump time." };
        var pidfile = new Option<string?>("--pidfile") { Description = "Write the restored root task's pid to FILE, as CRIU's --pidfile." };
        var leaveStopped = new Option<bool>("--leave-stopped", "-s") { Description = "Leave the restored tasks stopped (SIGSTOP) instead of resuming them; 'kill -s CONT' resumes them." };
        var detached = new Option<bool>("--restore-detached", "-d")
        {
            Description = "Return once the tree is restored, leaving it to run in the machine (CRIU's -d). A simulated machine's tasks run only under 'run', so restore always returns so; see the README.",
        };
        var lazyPages = new Option<bool>("--lazy-pages") { Description = "Restore a dump --lazy-pages: the lazy pages stay missing, registered with userfaultfd in missing mode, until 'criu-sharp lazy-pages' fetches them (the tasks must not run before)." };
        var json = CommonOptions.Json();
        var cmd = new Command("restore", "Rebuild a dumped process tree (same pids, memory, registers) in a machine — the default one, or --machine DEST standing for another host.");
        cmd.Options.Add(dir);
        machine.AddTo(cmd);
        kernel.AddTo(cmd);
        cmd.Options.Add(displayStats);
        cmd.Options.Add(noVerify);
        cmd.Options.Add(pidfile);
        cmd.Options.Add(leaveStopped);
        cmd.Options.Add(detached);
        cmd.Options.Add(lazyPages);
        cmd.Options.Add(json);
        cmd.SetAction(p =>
        {
            string images = Path.GetFullPath(p.GetValue(dir)!);
            if (!Directory.Exists(images))
                throw new UserException(ExitCode.BadInput, $"{images}: no such directory");
            using var lease = machine.OpenOrCreate(p, kernel.Config(p), kernel);
            var m = lease.Machine;
            var log = CliLog.Current;
            ImportHostFiles(m, images, p.InvocationConfiguration.Error);
            log.Write(CliLog.Info, $"Restoring from {images} into {m.Directory}");
            var result = TerminalProgress.Run(p.GetValue(json), "restoring",
                () => Criu.Restore(m.AsKernelApi(), new RestoreOptions { ImagesDir = images, Verify = !p.GetValue(noVerify), LeaveStopped = p.GetValue(leaveStopped), LazyPages = p.GetValue(lazyPages) }));
            // Pages are missing until lazy-pages brings them: the mark goes down before the tree does.
            if (result.Lazy.Count > 0)
                m.MarkLazyRestore(images, result.Lazy.Select(l => l.Pid));
            m.Save();
            lease.Keep();
            foreach (var w in result.Warnings)
            {
                log.Write(CliLog.Warn, w.Message);
                p.InvocationConfiguration.Error.WriteLine($"criu-sharp: warning: {w.Message}");
            }
            log.Write(CliLog.Info, $"Restored {string.Join(' ', result.Pids)}: {result.Stats.PagesRestored} pages, {result.Stats.VmasVerified} VMAs verified");
            if (p.GetValue(pidfile) is string pf && result.Pids.Count > 0)
                AtomicFile.Write(Path.GetFullPath(pf), System.Text.Encoding.ASCII.GetBytes($"{result.Pids[0]}"));
            log.Write(CliLog.Info, "Restore finished successfully");
            var o = p.InvocationConfiguration.Output;
            var s = result.Stats;
            string stateName = p.GetValue(leaveStopped) ? "stopped" : "running";
            if (p.GetValue(json))
            {
                o.WriteLine(JsonSerializer.Serialize(new { machine = m.Directory, images_dir = images, pids = result.Pids, state = stateName, stats = JsonOut.Stats(s), warnings = result.Warnings.Select(w => w.Message) }, JsonOut.Options));
                if (p.GetValue(displayStats))
                    DisplayStats(p.InvocationConfiguration.Error, s);
            }
            else if (p.GetValue(displayStats))
                DisplayStats(o, s);
            else
                o.WriteLine($"restored {string.Join(' ', result.Pids)} into {m.Directory} ({s.PagesRestored} pages, {s.VmasVerified} VMAs verified){(p.GetValue(leaveStopped) ? ", left stopped" : "")}");
            if (result.Lazy.Count > 0 && !p.GetValue(json))
                o.WriteLine($"{result.Lazy.Aggregate(0UL, (acc, l) => acc + l.Ranges.Aggregate(0UL, (x, r) => x + r.Pages))} lazy pages wait for: criu-sharp lazy-pages -D {images} --page-server --address ADDRESS --port PORT");
            return 0;
        });
        return cmd;
    }

    private static void DisplayStats(TextWriter o, RestoreStats s)
    {
        o.WriteLine("Displaying restore stats:");
        o.WriteLine($"Pages compared: {s.PagesCompared} (0x{s.PagesCompared:x})");
        o.WriteLine($"Pages skipped COW: {s.PagesSkippedCow} (0x{s.PagesSkippedCow:x})");
        o.WriteLine($"Pages restored: {s.PagesRestored} (0x{s.PagesRestored:x})");
        o.WriteLine($"Forking time: {s.ForkingTime} us");
        o.WriteLine($"Restore time: {s.RestoreTime} us");
        o.WriteLine($"VMAs verified: {s.VmasVerified}");
    }
}

/// <summary><c>dedup -D DIR</c>: CRIU's <c>criu dedup</c>.</summary>
public static class DedupCommand
{
    public static Command Create()
    {
        var dir = new Option<string>("--images-dir", "-D") { Description = "Image directory whose parents lose the pages it stores itself (default: the current directory).", DefaultValueFactory = _ => "." };
        var json = CommonOptions.Json();
        var cmd = new Command("dedup", "Punch out of the parent images every page a later image set stores itself, as 'criu dedup' (the work --auto-dedup does while dumping).");
        cmd.Options.Add(dir);
        cmd.Options.Add(json);
        cmd.SetAction(p =>
        {
            var r = Dedup.Run(Path.GetFullPath(p.GetValue(dir)!));
            CliLog.Current.Write(CliLog.Info, $"Deduplicated the parents of {r.ImagesDir}: {r.BytesPunched} bytes punched");
            var o = p.InvocationConfiguration.Output;
            if (p.GetValue(json))
                o.WriteLine(JsonSerializer.Serialize(new { images_dir = r.ImagesDir, pids = r.Pids, bytes_punched = r.BytesPunched }, JsonOut.Options));
            else
                o.WriteLine($"{r.ImagesDir}: {r.BytesPunched} bytes punched out of the parent images");
            return 0;
        });
        return cmd;
    }
}

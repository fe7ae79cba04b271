using System.Globalization;
using System.Runtime.InteropServices;

namespace CriuSharp.HostKernel;

/// <summary>How a tree was frozen, reported to the user.</summary>
public enum FreezeMethod { CgroupFreezer, SigStop }

/// <summary>
/// Stops a host process tree and lets it run again, never killing it.
/// <code>
///  cgroup v1 freezer mounted and writable:
///    mkdir FREEZER/criu-sharp-PID-RAND ─▶ each task's cgroup.procs moved in (old cgroup kept)
///    ─▶ freezer.state = FROZEN (poll until FROZEN) ······ thaw: THAWED ─▶ tasks moved back ─▶ rmdir
///    (with ptrace, LinuxHost seizes every thread while frozen and the thaw's three steps come
///    right after, the tasks held in a ptrace-stop: see LeaveCgroupKeepingStops)
///  otherwise:
///    SIGSTOP every thread group (those already stopped are remembered) ─▶ wait for state T
///    ······ thaw: SIGCONT only to the ones we stopped
/// </code>
/// Documentation/admin-guide/cgroup-v1/freezer-subsystem.rst: moving a task into a FROZEN
/// cgroup freezes it, so tasks found after the freeze (a fork that raced it) are moved in too.
/// </summary>
public sealed class Freezer : IDisposable
{
    private readonly string? _cgroup;
    private readonly Dictionary<int, string> _origin = [];
    private readonly List<int> _stopped = [];
    private bool _thawed;
    private TimeSpan _timeout = DefaultTimeout;

    /// <summary>How long the freezer cgroup may take to reach FROZEN: CRIU's default --timeout.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(10);

    public FreezeMethod Method { get; }
    public IReadOnlyList<int> Pids => [.. _origin.Keys.Concat(_stopped)];

    private Freezer(FreezeMethod method, string? cgroup)
    {
        Method = method;
        _cgroup = cgroup;
    }

    /// <summary>The cgroup v1 freezer mount point, or null (cgroup v2 only, or not mounted).</summary>
    public static string? FreezerRoot()
    {
        foreach (var line in File.ReadLines("/proc/self/mountinfo"))
        {
            // id parent maj:min root mountpoint opts ... - fstype source superopts
            int dash = line.IndexOf(" - ", StringComparison.Ordinal);
            if (dash < 0) continue;
            var tail = line[(dash + 3)..].Split(' ');
            if (tail.Length < 3 || tail[0] != "cgroup") continue;
            if (!tail[2].Split(',').Contains("freezer")) continue;
            var f = line.Split(' ');
            if (f[3] != "/") continue; // a bind of a sub-hierarchy: cannot map /proc/PID/cgroup paths
            return f[4];
        }
        return null;
    }

    /// <summary>
    /// Freezes the tree of <paramref name="root"/> (rescanned after freezing, until stable). The
    /// freezer cgroup gets <paramref name="timeout"/> (CRIU's --timeout; 10 s by default) to reach
    /// FROZEN, as criu/seize.c freeze_processes polls it.
    /// </summary>
    public static Freezer Freeze(int root, bool preferCgroup = true, TimeSpan? timeout = null)
    {
        if (!ProcFs.Exists(root))
            throw new HostKernelException(HostErrorKind.NoSuchProcess, "no such process", root, Interop.Libc.ESRCH);
        string? fr = preferCgroup ? FreezerRoot() : null;
        if (fr is not null)
        {
            string dir = Path.Combine(fr, $"criu-sharp-{Environment.ProcessId}-{Random.Shared.Next():x8}");
            try
            {
                Directory.CreateDirectory(dir);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                fr = null;
            }
            if (fr is not null)
            {
                var fz = new Freezer(FreezeMethod.CgroupFreezer, dir) { _timeout = timeout ?? DefaultTimeout };
                try
                {
                    fz.FreezeCgroup(root, fr);
                    return fz;
                }
                catch
                {
                    fz.Dispose();
                    throw;
                }
            }
        }
        var s = new Freezer(FreezeMethod.SigStop, null);
        try
        {
            s.FreezeSignals(root);
            return s;
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    private void FreezeCgroup(int root, string freezerRoot)
    {
        for (int round = 0; round < 8; round++)
        {
            bool added = false;
            foreach (var (pid, _) in ProcFs.Tree(root))
            {
                if (_origin.ContainsKey(pid)) continue;
                string? from = FreezerCgroupOf(pid);
                if (from is null) continue; // exited meanwhile
                try
                {
                    File.WriteAllText(Path.Combine(_cgroup!, "cgroup.procs"), pid.ToString(CultureInfo.InvariantCulture));
                }
                catch (IOException) when (!ProcFs.Exists(pid)) { continue; }
                catch (UnauthorizedAccessException)
                {
                    throw new HostKernelException(HostErrorKind.PermissionDenied, "cannot move the task into a freezer cgroup", pid, Interop.Libc.EACCES);
                }
                _origin[pid] = Path.Combine(freezerRoot, from.TrimStart('/'));
                added = true;
            }
            if (round == 0 && _origin.Count == 0)
                throw new HostKernelException(HostErrorKind.Vanished, "the process exited", root, Interop.Libc.ESRCH);
            if (round == 0)
                File.WriteAllText(Path.Combine(_cgroup!, "freezer.state"), "FROZEN");
            if (!added && round > 0)
                break;
            WaitFrozen();
        }
    }

    private void WaitFrozen()
    {
        string state = Path.Combine(_cgroup!, "freezer.state");
        WaitFor(() => File.ReadAllText(state).Trim() == "FROZEN", _timeout);
    }

    /// <summary>
    /// Polls <paramref name="frozen"/> until it holds or <paramref name="timeout"/> has passed;
    /// then fails with ETIMEDOUT (CRIU: "Unable to freeze cgroup ... timeout"), and the caller's
    /// thaw runs.
    /// </summary>
    internal static void WaitFor(Func<bool> frozen, TimeSpan timeout)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (!frozen())
        {
            if (watch.Elapsed >= timeout)
                throw new HostKernelException(HostErrorKind.Io,
                    $"timeout reached: the freezer cgroup did not reach FROZEN within {timeout.TotalSeconds:0.###} s (--timeout)", errno: Interop.Libc.ETIMEDOUT);
            Thread.Sleep(1);
        }
    }

    private static string? FreezerCgroupOf(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/cgroup"))
            {
                var f = line.Split(':', 3);
                if (f.Length == 3 && f[1].Split(',').Contains("freezer"))
                    return f[2];
            }
            return "/";
        }
        catch (IOException) { return null; }
    }

    private void FreezeSignals(int root)
    {
        for (int round = 0; round < 8; round++)
        {
            bool added = false;
            foreach (var (pid, _) in ProcFs.Tree(root))
            {
                if (_stopped.Contains(pid) || _origin.ContainsKey(pid)) continue;
                if (ProcFs.State(pid, pid) == 'T')
                {
                    _origin[pid] = ""; // already stopped by someone else: leave it so
                    continue;
                }
                if (Interop.Libc.Kill(pid, Interop.Libc.SIGSTOP) != 0)
                {
                    int e = Marshal.GetLastPInvokeError();
                    if (e == Interop.Libc.ESRCH) continue;
                    throw HostKernelException.FromErrno(e, "cannot stop the task", pid);
                }
                _stopped.Add(pid);
                added = true;
            }
            if (round == 0 && _stopped.Count + _origin.Count == 0)
                throw new HostKernelException(HostErrorKind.Vanished, "the process exited", root, Interop.Libc.ESRCH);
            foreach (int pid in _stopped)
                foreach (int tid in ProcFs.Threads(pid))
                    for (int i = 0; i < 10_000 && ProcFs.State(pid, tid) is not ('T' or 't' or 'Z' or 'X' or '\0'); i++)
                        Thread.Sleep(1);
            if (!added) break;
        }
    }

    /// <summary>
    /// Thaws the freezer cgroup but leaves the tasks in it (CRIU's seize: tasks that have been
    /// PTRACE_INTERRUPTed while frozen trap into a ptrace-stop as soon as they are thawed).
    /// </summary>
    internal void ThawCgroupKeepingTasks()
    {
        if (Method == FreezeMethod.CgroupFreezer)
            File.WriteAllText(Path.Combine(_cgroup!, "freezer.state"), "THAWED");
    }

    /// <summary>
    /// Once the tracer has seized and interrupted every thread (<see cref="Ptrace"/>), the freezer
    /// cgroup has done its work: the tree was stopped without racing its forks while the tracer
    /// took hold of it, and the cgroup is already THAWED (a thread that never reached its
    /// ptrace-stop would run whether or not it stays in it). The tasks go back to their own
    /// cgroups right away, ptrace-stopped, and ours is removed, so the thaw is only the tracer's
    /// detach. Done moments after the move in, the move back usually costs microseconds rather
    /// than an RCU grace period: kernel/cgroup/cgroup.c takes cgroup_threadgroup_rwsem with
    /// percpu_down_write, whose rcu_sync_enter (kernel/rcu/sync.c) waits for a grace period only
    /// when the last writer left more than a grace period ago (measured: thaw 6-18 ms before,
    /// 0.1 ms now).
    /// </summary>
    internal void LeaveCgroupKeepingStops()
    {
        if (Method == FreezeMethod.CgroupFreezer && !_left)
        {
            _left = true;
            LeaveCgroup();
        }
    }

    private bool _left;

    /// <summary>Lets the tree run again and removes every trace of the freeze.</summary>
    public void Thaw()
    {
        if (_thawed) return;
        _thawed = true;
        if (Method == FreezeMethod.CgroupFreezer)
        {
            if (!_left)
                LeaveCgroup();
            _left = true;
        }
        else
        {
            foreach (int pid in _stopped)
                Interop.Libc.Kill(pid, Interop.Libc.SIGCONT);
        }
    }

    /// <summary>THAWED, every task back where it was, the cgroup removed.</summary>
    private void LeaveCgroup()
    {
        try { File.WriteAllText(Path.Combine(_cgroup!, "freezer.state"), "THAWED"); } catch (IOException) { }
        foreach (var (pid, origin) in _origin)
        {
            try { File.WriteAllText(Path.Combine(origin, "cgroup.procs"), pid.ToString(CultureInfo.InvariantCulture)); }
            catch (IOException) { } // exited
            catch (UnauthorizedAccessException) { } // its old cgroup refuses it: it stays, thawed, in ours
        }
        // Tasks forked into our cgroup while it was being set up go back to the root's origin.
        string procs = Path.Combine(_cgroup!, "cgroup.procs");
        string fallback = _origin.Values.FirstOrDefault() ?? Path.GetDirectoryName(_cgroup)!;
        for (int i = 0; i < 100 && Directory.Exists(_cgroup); i++)
        {
            try
            {
                foreach (var w in File.ReadAllText(procs).Split('\n', StringSplitOptions.RemoveEmptyEntries))
                    try { File.WriteAllText(Path.Combine(fallback, "cgroup.procs"), w); } catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
                Directory.Delete(_cgroup!);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { Thread.Sleep(1); }
        }
    }

    /// <summary>
    /// Queues SIGSTOP for every process of the tree while it is still frozen (or ptrace-stopped),
    /// so each one enters a group stop as soon as the freeze ends and stays there until SIGCONT.
    /// Call before the tracer detaches and before <see cref="Thaw"/>, which then sends no SIGCONT.
    /// </summary>
    public void QueueStop()
    {
        foreach (int pid in Pids)
            if (Interop.Libc.Kill(pid, Interop.Libc.SIGSTOP) != 0 && Marshal.GetLastPInvokeError() != Interop.Libc.ESRCH)
                throw HostKernelException.FromErrno(Marshal.GetLastPInvokeError(), "cannot stop the task", pid);
        _stopped.Clear();
    }

    public void Dispose() => Thaw();
}

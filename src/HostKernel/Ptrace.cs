using System.Runtime.InteropServices;

namespace CriuSharp.HostKernel;

/// <summary>
/// Reads the registers of a frozen tree's threads with ptrace, as CRIU's seize does
/// (criu/seize.c, ptrace(2) "PTRACE_SEIZE"): each thread is seized and interrupted while the
/// tree is stopped, so it traps into a ptrace-stop without running user code; registers come
/// from PTRACE_GETREGSET(NT_PRSTATUS); PTRACE_DETACH lets each thread go back to where it was.
/// The stop is observed in /proc/TID/stat (state 't') rather than with waitpid, so no wait
/// status of the tracer's own children is ever consumed.
/// </summary>
public sealed unsafe class Ptrace : IDisposable
{
    private const long PTRACE_DETACH = 17, PTRACE_GETREGSET = 0x4204, PTRACE_SEIZE = 0x4206, PTRACE_INTERRUPT = 0x4207;
    private const int NT_PRSTATUS = 1;
    private readonly List<(int Pid, int Tid)> _seized = [];

    public string? Error { get; private set; }

    /// <summary>Seizes and interrupts every thread of <paramref name="pids"/>; on refusal detaches all and sets <see cref="Error"/>.</summary>
    public bool SeizeAll(IEnumerable<int> pids)
    {
        foreach (int pid in pids)
            foreach (int tid in ProcFs.Threads(pid))
            {
                if (Interop.Libc.Ptrace(PTRACE_SEIZE, tid, 0, 0) != 0)
                {
                    int e = Marshal.GetLastPInvokeError();
                    if (e == Interop.Libc.ESRCH) continue;
                    Error = $"ptrace(PTRACE_SEIZE, {tid}): {Interop.Libc.ErrorText(e)}";
                    Dispose();
                    return false;
                }
                _seized.Add((pid, tid));
                Interop.Libc.Ptrace(PTRACE_INTERRUPT, tid, 0, 0);
            }
        return true;
    }

    /// <summary>Waits until every seized thread is in a ptrace-stop (after a cgroup freezer thaw, or at once for SIGSTOP).</summary>
    public void WaitStopped()
    {
        foreach (var (pid, tid) in _seized)
            for (int i = 0; i < 10_000 && ProcFs.State(pid, tid) is not ('t' or 'Z' or 'X' or '\0'); i++)
                Thread.Sleep(1);
    }

    public IEnumerable<int> Threads(int pid) => _seized.Where(s => s.Pid == pid).Select(s => s.Tid);

    /// <summary>NT_PRSTATUS of a seized thread (x86_64: struct user_regs_struct, 27 words), or null.</summary>
    public ulong[]? GetRegs(int tid)
    {
        var regs = new ulong[64];
        fixed (ulong* p = regs)
        {
            var iov = new Interop.Libc.IoVec { Base = (nint)p, Len = (nuint)(regs.Length * 8) };
            if (Interop.Libc.Ptrace(PTRACE_GETREGSET, tid, NT_PRSTATUS, (nint)(&iov)) != 0)
                return null;
            return regs[..(int)(iov.Len / 8)];
        }
    }

    public void Dispose()
    {
        foreach (var (_, tid) in _seized)
            Interop.Libc.Ptrace(PTRACE_DETACH, tid, 0, 0);
        _seized.Clear();
    }
}

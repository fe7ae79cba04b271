using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace CriuSharp.HostKernel.Tests;

/// <summary>
/// A real process started by a test: its stdin is a FIFO the test writes commands to, its stdout
/// a file the test reads answers from. It is started through a shell that backgrounds it, so it
/// is not this test process's child (the test runner's own child bookkeeping never sees its
/// ptrace stops). Dispose kills it, after checking by start time that the pid is still ours.
/// </summary>
public sealed class RealChild : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);
    private readonly string _dir;
    private readonly FileStream _in;
    private readonly ulong _startTicks;
    private int _linesRead;

    public int Pid { get; }
    public string Dir => _dir;

    private RealChild(string dir, int pid, FileStream input)
    {
        _dir = dir;
        Pid = pid;
        _in = input;
        _startTicks = StartTicks(pid) ?? throw new InvalidOperationException($"child {pid} is gone");
    }

    /// <summary>Starts <paramref name="exe"/> with stdin from a FIFO and stdout/stderr to files.</summary>
    public static RealChild Start(string exe, params string[] args)
    {
        string dir = Directory.CreateTempSubdirectory("criu-sharp-host-").FullName;
        string fifo = Path.Combine(dir, "in");
        Run("mkfifo", fifo);
        string cmd = $"{Quote(exe)} {string.Join(' ', args.Select(Quote))} <{Quote(fifo)} >{Quote(Path.Combine(dir, "out"))} 2>{Quote(Path.Combine(dir, "err"))} & echo $!";
        var psi = new ProcessStartInfo("/bin/sh", ["-c", cmd]) { RedirectStandardOutput = true };
        // glibc (2.35+) registers each thread's struct rseq, and the kernel rewrites its cpu_id
        // fields whenever the thread resumes on another CPU (kernel/rseq.c, rseq_update_cpu_node_id),
        // so that word of the TCB changes after a thaw without the program writing it. The tests
        // compare a chain with memory read afterwards, so the children run without rseq.
        psi.Environment["GLIBC_TUNABLES"] = "glibc.pthread.rseq=0";
        using var sh = Process.Start(psi)!;
        string pidText = sh.StandardOutput.ReadLine() ?? throw new InvalidOperationException("no pid from sh");
        sh.WaitForExit();
        int pid = int.Parse(pidText.Trim(), CultureInfo.InvariantCulture);
        // Opening the write end releases the child's open of the read end.
        var input = new FileStream(fifo, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, 1);
        return new RealChild(dir, pid, input);
    }

    private static string Quote(string s) => "'" + s.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    public static string Run(string exe, params string[] args)
    {
        var psi = new ProcessStartInfo(exe, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        if (!p.WaitForExit(60_000)) { p.Kill(); throw new TimeoutException($"{exe} took more than 60 s"); }
        if (p.ExitCode != 0) throw new InvalidOperationException($"{exe} {string.Join(' ', args)} exited {p.ExitCode}: {o}");
        return o;
    }

    /// <summary>Sends one command line.</summary>
    public void Send(string line)
    {
        var b = Encoding.ASCII.GetBytes(line + "\n");
        _in.Write(b);
        _in.Flush();
    }

    /// <summary>The next line of the child's stdout (waits at most 20 s).</summary>
    public string ReadLine()
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < Timeout)
        {
            string text = File.Exists(Path.Combine(_dir, "out")) ? File.ReadAllText(Path.Combine(_dir, "out")) : "";
            var lines = text.Split('\n');
            // Only complete lines: the last element is what follows the final newline.
            if (lines.Length - 1 > _linesRead)
                return lines[_linesRead++];
            if (!Alive)
                throw new InvalidOperationException($"child {Pid} exited: {(File.Exists(Path.Combine(_dir, "err")) ? File.ReadAllText(Path.Combine(_dir, "err")) : "")}");
            Thread.Sleep(5);
        }
        throw new TimeoutException($"child {Pid} did not answer within {Timeout.TotalSeconds} s");
    }

    /// <summary>Sends a command and returns its answer line.</summary>
    public string Ask(string line)
    {
        Send(line);
        return ReadLine();
    }

    public string Output => File.Exists(Path.Combine(_dir, "out")) ? File.ReadAllText(Path.Combine(_dir, "out")) : "";

    public bool Alive => StartTicks(Pid) == _startTicks && State(Pid) is not ('Z' or 'X' or '\0');

    public static char State(int pid)
    {
        try
        {
            var s = File.ReadAllText($"/proc/{pid}/stat");
            return s[s.LastIndexOf(')') + 2];
        }
        catch (IOException) { return '\0'; }
    }

    private static ulong? StartTicks(int pid)
    {
        try
        {
            var s = File.ReadAllText($"/proc/{pid}/stat");
            return ulong.Parse(s[(s.LastIndexOf(')') + 2)..].Split(' ')[19], CultureInfo.InvariantCulture);
        }
        catch (IOException) { return null; }
    }

    /// <summary>The process's memory read through /proc/PID/mem, independently of process_vm_readv.</summary>
    public byte[] ReadMem(ulong va, int bytes)
    {
        using var f = new FileStream($"/proc/{Pid}/mem", FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1);
        f.Position = (long)va;
        var b = new byte[bytes];
        f.ReadExactly(b);
        return b;
    }

    public void Dispose()
    {
        if (StartTicks(Pid) == _startTicks)
        {
            Process.GetProcessById(Pid).Kill();
            for (int i = 0; i < 2000 && StartTicks(Pid) == _startTicks && State(Pid) != 'Z'; i++)
                Thread.Sleep(1);
        }
        _in.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}

/// <summary>The test programs, built once per run with the system C compiler.</summary>
public static class Programs
{
    private static readonly Lazy<string> MemTouchExe = new(() =>
    {
        string dir = Directory.CreateTempSubdirectory("criu-sharp-prog-").FullName;
        string exe = Path.Combine(dir, "memtouch");
        RealChild.Run("cc", "-O2", "-o", exe, Path.Combine(AppContext.BaseDirectory, "Programs", "memtouch.c"));
        return exe;
    });

    public static string MemTouch => MemTouchExe.Value;

    private static readonly Lazy<string> ThreadsExe = new(() =>
    {
        string dir = Directory.CreateTempSubdirectory("criu-sharp-prog-").FullName;
        string exe = Path.Combine(dir, "threads");
        RealChild.Run("cc", "-O2", "-pthread", "-o", exe, Path.Combine(AppContext.BaseDirectory, "Programs", "threads.c"));
        return exe;
    });

    /// <summary>A pthread program: N named worker threads, each owning a page (Programs/threads.c).</summary>
    public static string Threads => ThreadsExe.Value;
    private static readonly Lazy<string> GhostExe = new(() =>
    {
        string dir = Directory.CreateTempSubdirectory("criu-sharp-prog-").FullName;
        string exe = Path.Combine(dir, "ghost");
        RealChild.Run("cc", "-O2", "-o", exe, Path.Combine(AppContext.BaseDirectory, "Programs", "ghost.c"));
        return exe;
    });

    /// <summary>Maps a file shared and private, then unlinks it (Programs/ghost.c).</summary>
    public static string Ghost => GhostExe.Value;
    public static string MemTouchPy => Path.Combine(AppContext.BaseDirectory, "Programs", "memtouch.py");

    /// <summary>Python 3 at /usr/bin (the one the system ships).</summary>
    public static string Python => File.Exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";

    public static ulong ParseReady(string line)
    {
        var f = line.Split(' ');
        if (f[0] != "ready") throw new InvalidOperationException($"unexpected first line '{line}'");
        return ulong.Parse(f[1].AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
    }
}

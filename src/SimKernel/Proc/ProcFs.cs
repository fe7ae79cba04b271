using System.Buffers.Binary;
using System.Text;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Proc;

public enum OpenMode { ReadOnly, WriteOnly, ReadWrite }

public enum Whence { Set = 0, Cur = 1, End = 2 }

/// <summary>
/// An open /proc file. The semantics follow the kernel's file operations for each file, so a
/// selftest that opens, seeks, reads and writes translates line by line.
/// </summary>
public abstract class ProcFile
{
    public long Position { get; protected set; }
    public virtual SysResult Read(Span<byte> buffer) => Errno.EINVAL;
    public virtual SysResult Write(ReadOnlySpan<byte> data) => Errno.EINVAL;

    public virtual SysResult Lseek(long offset, Whence whence)
    {
        long target = whence switch
        {
            Whence.Set => offset,
            Whence.Cur => Position + offset,
            _ => -1,
        };
        if (whence == Whence.End || target < 0)
            return Errno.EINVAL;
        Position = target;
        return SysResult.Success(target);
    }

    public virtual SysResult Ioctl(uint cmd, ref PmScanArg arg, Span<PageRegion> vec) => Errno.ENOTTY;

    /// <summary>
    /// ioctl(fd, cmd, uarg) as issued by <paramref name="caller"/>: <paramref name="uarg"/> is an
    /// address in the caller's memory, read and written back as the kernel's copy_from_user and
    /// copy_to_user would.
    /// </summary>
    public virtual SysResult Ioctl(SimTask caller, uint cmd, ulong uarg) => Errno.ENOTTY;
}

/// <summary>/proc/PID/{maps,smaps,status}: text generated when opened, read like a seq_file.</summary>
internal sealed class TextFile(string text) : ProcFile
{
    private readonly byte[] _bytes = Encoding.ASCII.GetBytes(text);

    public override SysResult Read(Span<byte> buffer)
    {
        if (Position >= _bytes.Length)
            return SysResult.Success(0);
        int n = (int)Math.Min(buffer.Length, _bytes.Length - Position);
        _bytes.AsSpan((int)Position, n).CopyTo(buffer);
        Position += n;
        return SysResult.Success(n);
    }
}

internal sealed class ClearRefsFile(SimTask task) : ProcFile
{
    public override SysResult Write(ReadOnlySpan<byte> data) => ClearRefs.Write(task, data, task.Kernel.Version.ClearRefsMax);
}

/// <summary>/proc/PID/pagemap (and pagemap2): 8 bytes per virtual page, bound to the mm at open.</summary>
internal sealed class PagemapFile(SimTask task, MmStruct mm, PagemapLayout layout, bool privileged) : ProcFile
{
    public override SysResult Read(Span<byte> buffer)
    {
        long count = buffer.Length;
        if ((Position & 7) != 0 || (count & 7) != 0)
            return Errno.EINVAL;
        if (count == 0)
            return SysResult.Success(0);
        if (Position > long.MaxValue - count)
            return Errno.EINVAL;
        if (mm.Dead)
            return SysResult.Success(0);
        var arch = mm.Kernel.Arch;
        ulong endIndex = arch.TaskSize >> arch.PageShift;
        ulong first = (ulong)Position / 8;
        if (first >= endIndex)
            return SysResult.Success(0);
        int entries = (int)Math.Min((ulong)count / 8, endIndex - first);
        var tmp = System.Buffers.ArrayPool<ulong>.Shared.Rent(Math.Min(entries, 1 << 16));
        try
        {
            int done = 0;
            while (done < entries)
            {
                int n = Math.Min(entries - done, tmp.Length);
                Pagemap.Read(mm, (first + (ulong)done) << arch.PageShift, tmp.AsSpan(0, n), layout, privileged);
                var dst = buffer.Slice(done * 8, n * 8);
                for (int i = 0; i < n; i++)
                    BinaryPrimitives.WriteUInt64LittleEndian(dst.Slice(i * 8), tmp[i]);
                done += n;
            }
        }
        finally
        {
            System.Buffers.ArrayPool<ulong>.Shared.Return(tmp);
        }
        Position += entries * 8L;
        return SysResult.Success(entries * 8L);
    }

    public override SysResult Ioctl(uint cmd, ref PmScanArg arg, Span<PageRegion> vec)
    {
        if (layout != PagemapLayout.Modern || !task.Kernel.Version.HasPagemapScan)
            return Errno.ENOTTY;
        if (cmd != PageCategory.PagemapScanIoctl)
            return Errno.EINVAL;
        return PagemapScan.Scan(task, ref arg, vec);
    }

    public override SysResult Ioctl(SimTask caller, uint cmd, ulong uarg)
    {
        if (layout != PagemapLayout.Modern || !task.Kernel.Version.HasPagemapScan)
            return Errno.ENOTTY;
        if (cmd != PageCategory.PagemapScanIoctl)
            return Errno.EINVAL;
        return PagemapScan.ScanUser(task, caller, uarg);
    }
}

/// <summary>/proc/PID/mem: reads and writes at the file position, which is the virtual address.</summary>
internal sealed class MemFile(MmStruct mm, bool writable) : ProcFile
{
    public override SysResult Read(Span<byte> buffer)
    {
        var r = mm.Access((ulong)Position, buffer, write: false, force: true, out _);
        if (!r.Ok)
            return Errno.EIO;
        Position += r.Value;
        return r;
    }

    public override SysResult Write(ReadOnlySpan<byte> data)
    {
        if (!writable)
            return Errno.EBADF;
        var span = System.Runtime.InteropServices.MemoryMarshal.CreateSpan(
            ref System.Runtime.InteropServices.MemoryMarshal.GetReference(data), data.Length);
        var r = mm.Access((ulong)Position, span, write: true, force: true, out _);
        if (!r.Ok)
            return Errno.EIO;
        Position += r.Value;
        return r;
    }

    public override SysResult Lseek(long offset, Whence whence)
    {
        // /proc/PID/mem takes any position, including "negative" high addresses.
        if (whence == Whence.End)
            return Errno.EINVAL;
        Position = whence == Whence.Set ? offset : Position + offset;
        return SysResult.Success(Position);
    }
}

/// <summary>
/// The /proc interfaces CRIU reads, as files (<see cref="Open"/>) and as typed helpers. A dumper
/// that sees the kernel only through this class and the restore-side system calls sees what CRIU
/// sees on Linux.
/// </summary>
public sealed class ProcFs
{
    private readonly Kernel _k;

    internal ProcFs(Kernel kernel) => _k = kernel;

    /// <summary>open("/proc/PID/NAME"). <paramref name="privileged"/> stands for CAP_SYS_ADMIN of the opener.</summary>
    public SysResult Open(int pid, string name, OpenMode mode, out ProcFile? file, bool privileged = true)
    {
        file = null;
        var task = _k.FindTask(pid);
        if (task is null || task.State == TaskState.Dead)
            return Errno.ENOENT;
        bool wantsWrite = mode != OpenMode.ReadOnly;
        switch (name)
        {
            case "maps":
            case "smaps":
            case "status":
            case "stat":
                if (wantsWrite)
                    return Errno.EACCES;
                file = new TextFile(name switch
                {
                    "maps" => ProcText.Maps(task.Mm),
                    "smaps" => ProcText.Smaps(task.Mm),
                    "stat" => ProcText.Stat(task),
                    _ => ProcText.Status(task),
                });
                return SysResult.Success();
            case "clear_refs":
                // Mode 0200; root may still open it for reading, but read() then fails with EINVAL.
                if (!privileged && mode != OpenMode.WriteOnly)
                    return Errno.EACCES;
                file = new ClearRefsFile(task);
                return SysResult.Success();
            case "pagemap":
                if (wantsWrite)
                    return Errno.EACCES;
                file = new PagemapFile(task, task.Mm, _k.Version.PagemapLayout, privileged);
                return SysResult.Success();
            case "pagemap2":
                if (!_k.Version.HasPagemap2)
                    return Errno.ENOENT;
                if (wantsWrite)
                    return Errno.EACCES;
                file = new PagemapFile(task, task.Mm, PagemapLayout.Pagemap2, privileged);
                return SysResult.Success();
            case "mem":
                file = new MemFile(task.Mm, wantsWrite);
                return SysResult.Success();
            default:
                return Errno.ENOENT;
        }
    }

    private SimTask Task(int pid) => _k.FindTask(pid) is { State: not TaskState.Dead } t ? t
        : throw new KernelException(Errno.ESRCH, $"/proc/{pid}");

    /// <summary>/proc/uptime, in nanoseconds of virtual time.</summary>
    public ulong UptimeNs => _k.UptimeNs;

    /// <summary>Field 22 of /proc/PID/stat (start time), in nanoseconds since boot: the PID-reuse guard's input.</summary>
    public ulong StartTimeNs(int pid) => Task(pid).StartTimeNs;

    /// <summary>/proc/PID/task: the thread ids of the thread group, leader first.</summary>
    public IReadOnlyList<int> Threads(int pid) => _k.Threads(Task(pid).Tgid).Select(t => t.Pid).ToList();

    /// <summary>/proc/PID/task/TID/stat fields minflt and majflt of one thread.</summary>
    public (long MinFlt, long MajFlt) ThreadFaults(int tid)
    {
        var t = Task(tid);
        return (t.MinFlt, t.MajFlt);
    }

    /// <summary>The children of a task (/proc/PID/task/TID/children), in pid order.</summary>
    public IReadOnlyList<int> Children(int pid) => _k.Children(Task(pid).Pid).Select(t => t.Pid).ToList();

    public string Maps(int pid) => ProcText.Maps(Task(pid).Mm);
    public string Smaps(int pid) => ProcText.Smaps(Task(pid).Mm);
    public string Status(int pid) => ProcText.Status(Task(pid));
    /// <summary>/proc/PID/stat: one line, 52 fields (fs/proc/array.c do_task_stat), incl. the mm layout fields CRIU reads.</summary>
    public string Stat(int pid) => ProcText.Stat(Task(pid));

    /// <summary>Entries for <paramref name="count"/> pages from <paramref name="startVa"/> in the given layout.</summary>
    public ulong[] ReadPagemap(int pid, ulong startVa, int count, PagemapLayout? layout = null)
    {
        var entries = new ulong[count];
        ReadPagemap(pid, startVa, entries, layout);
        return entries;
    }

    public void ReadPagemap(int pid, ulong startVa, Span<ulong> entries, PagemapLayout? layout = null)
    {
        var l = layout ?? _k.Version.PagemapLayout;
        if (l == PagemapLayout.Pagemap2 && !_k.Version.HasPagemap2 && _k.Version.PagemapLayout != PagemapLayout.Modern)
            throw new KernelException(Errno.ENOENT, $"/proc/{pid}/pagemap2");
        Pagemap.Read(Task(pid).Mm, startVa, entries, l);
    }

    /// <summary>echo VALUE &gt; /proc/PID/clear_refs.</summary>
    public SysResult ClearRefs(int pid, string value) => ClearRefs(pid, Encoding.ASCII.GetBytes(value));

    public SysResult ClearRefs(int pid, ReadOnlySpan<byte> value)
    {
        var t = _k.FindTask(pid);
        if (t is null || t.State == TaskState.Dead)
            return Errno.ESRCH;
        return Proc.ClearRefs.Write(t, value, _k.Version.ClearRefsMax);
    }

    public SysResult PagemapScan(int pid, ref PmScanArg arg, Span<PageRegion> vec)
    {
        var t = _k.FindTask(pid);
        if (t is null || t.State == TaskState.Dead)
            return Errno.ESRCH;
        if (!_k.Version.HasPagemapScan)
            return Errno.ENOTTY;
        return Proc.PagemapScan.Scan(t, ref arg, vec);
    }

    /// <summary>process_vm_readv / /proc/PID/mem read: ptrace-style access that may fault pages in.</summary>
    public SysResult ReadMemory(int pid, ulong va, Span<byte> buffer)
    {
        var t = _k.FindTask(pid);
        if (t is null || !t.Alive)
            return Errno.ESRCH;
        var r = t.Mm.Access(va, buffer, write: false, force: true, out _);
        return r.Ok && r.Value == buffer.Length ? r : Errno.EFAULT;
    }

    /// <summary>
    /// vmsplice(2) of a task's memory into a pipe, as CRIU's parasite does for a dump: the pipe
    /// gets references to the task's own page frames, not copies. Each page is faulted in for
    /// reading first, as a read through /proc/PID/mem would. <paramref name="frames"/> receives
    /// the host address of each page's frame (PageSize bytes). Those bytes are the task's live
    /// memory: they are what was dumped only while the task stays frozen; the addresses stay
    /// valid while this kernel exists.
    /// </summary>
    public SysResult SplicePages(int pid, ulong va, Span<nint> frames)
    {
        var t = _k.FindTask(pid);
        if (t is null || !t.Alive)
            return Errno.ESRCH;
        return t.Mm.FrameAddresses(va, frames) ? SysResult.Success(frames.Length) : Errno.EFAULT;
    }

    /// <summary>process_vm_writev / /proc/PID/mem write (FOLL_FORCE: read-only private mappings are written by COW).</summary>
    public SysResult WriteMemory(int pid, ulong va, ReadOnlySpan<byte> data)
    {
        var t = _k.FindTask(pid);
        if (t is null || !t.Alive)
            return Errno.ESRCH;
        var span = System.Runtime.InteropServices.MemoryMarshal.CreateSpan(
            ref System.Runtime.InteropServices.MemoryMarshal.GetReference(data), data.Length);
        var r = t.Mm.Access(va, span, write: true, force: true, out _);
        return r.Ok && r.Value == data.Length ? r : Errno.EFAULT;
    }
}

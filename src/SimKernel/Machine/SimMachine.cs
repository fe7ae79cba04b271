using System.IO.MemoryMappedFiles;
using System.Numerics;

namespace CriuSharp.SimKernel.Machine;

/// <summary>The machine directory is held by another command.</summary>
public sealed class MachineBusyException(string dir, TimeSpan waited)
    : Exception($"machine {dir} is in use by another command (waited {waited.TotalSeconds:0.#} s)");

/// <summary>The machine directory is missing, not a machine, or damaged.</summary>
public sealed class MachineStateException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// One simulated host kept in a directory between commands, so a shell script can drive it step
/// by step like a real host.
///
///   DIR/machine.lock          held (flock) by the command using the machine
///   DIR/machine.state         everything but page contents; replaced atomically by rename
///   DIR/frames.dat            page contents at (pfn - FirstPfn) * PAGE_SIZE, sparse
///   DIR/frames.journal.G      frames modified by generation G, applied after G's state is in place
///   DIR/swap.G.dat            contents of the swap slots in use, when generation G wrote swap
///   DIR/lazy-restore.incomplete  a lazy restore whose pages have not all arrived: the images
///                             directory, then the restored pids (see MarkLazyRestore)
///
/// Loading maps frames.dat copy-on-write, so no page is read until it is used; saving writes only
/// the frames that changed. A command killed at any point leaves a usable state: before the rename
/// the old state and old files are untouched; after it, a leftover journal is replayed on load.
/// </summary>
public sealed unsafe class SimMachine : ISimHost, IDisposable
{
    public const string EnvironmentVariable = "CRIU_SHARP_MACHINE";
    public const string StateFileName = "machine.state";
    public const string FramesFileName = "frames.dat";
    public const string LockFileName = "machine.lock";
    private const ulong Magic = 0x3330484341_4D5343UL; // "CSMACH03": CRC-32 (IEEE) over the body; threads, hugetlb pools, SysV segments
    private const ulong MagicV2 = 0x3230484341_4D5343UL; // "CSMACH02": no threads or hugetlb state, no longer written
    private const ulong MagicV1 = 0x3130484341_4D5343UL; // "CSMACH01": CRC-32C, no longer written
    /// <summary>Frames between two crash points while a journal is written or replayed.</summary>
    private const int CrashBatchFrames = 256;

    private readonly FileStream _lock;
    private MemoryMappedFile? _map;
    private MemoryMappedViewAccessor? _view;
    private readonly LiveHost _live;
    private long _generation;
    private string _swapFile = "";

    private SimMachine(string dir, FileStream lockStream, Kernel kernel, long generation, string swapFile)
    {
        Directory = dir;
        _lock = lockStream;
        Kernel = kernel;
        _live = new LiveHost(kernel);
        _generation = generation;
        _swapFile = swapFile;
    }

    public string Directory { get; }
    public Kernel Kernel { get; }
    public long Generation => _generation;

    /// <summary>$CRIU_SHARP_MACHINE, else ./.criu-sharp/machine.</summary>
    public static string DefaultDirectory =>
        Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } env
            ? env
            : Path.Combine(Environment.CurrentDirectory, ".criu-sharp", "machine");

    public static bool Exists(string dir) => File.Exists(Path.Combine(dir, StateFileName));

    /// <summary>Creates a machine with a freshly booted kernel and saves it.</summary>
    public static SimMachine Create(string dir, KernelConfig config, TimeSpan lockWait, Action<TimeSpan>? waiting = null)
    {
        System.IO.Directory.CreateDirectory(dir);
        var lockStream = AcquireLock(dir, lockWait, waiting);
        try
        {
            if (Exists(dir))
                throw new MachineStateException($"a machine already exists in {dir}");
            var m = new SimMachine(dir, lockStream, new Kernel(config), 0, "");
            m.Save();
            return m;
        }
        catch
        {
            lockStream.Dispose();
            throw;
        }
    }

    /// <summary>Opens an existing machine, waiting up to <paramref name="lockWait"/> for other commands.</summary>
    /// <paramref name="waiting"/>, when given, is called once if the lock is held by another command,
    /// with the longest time this call will wait.
    public static SimMachine Open(string dir, TimeSpan lockWait, Action<TimeSpan>? waiting = null)
    {
        if (!Exists(dir))
            throw new MachineStateException($"no machine in {dir} (create one with 'criu-sharp spawn FILE')");
        var lockStream = AcquireLock(dir, lockWait, waiting);
        try
        {
            return Load(dir, lockStream);
        }
        catch
        {
            lockStream.Dispose();
            throw;
        }
    }

    private static FileStream AcquireLock(string dir, TimeSpan wait, Action<TimeSpan>? waiting)
    {
        string path = Path.Combine(dir, LockFileName);
        var start = DateTime.UtcNow;
        bool told = false;
        while (true)
        {
            try
            {
                // FileShare.None takes an exclusive flock on Unix: a second process fails here.
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException e) when (!IsLockHeld(e))
            {
                // Not contention: the lock file cannot be opened for writing at all (EROFS, EACCES
                // arrive as UnauthorizedAccessException), so waiting would never help.
                if (e.HResult == Erofs)
                    throw new IOException($"machine directory '{dir}' is on a read-only file system (commands need to write its lock and state)", e) { HResult = Erofs };
                throw;
            }
            catch (IOException) when (DateTime.UtcNow - start < wait)
            {
                if (!told)
                {
                    told = true;
                    waiting?.Invoke(wait);
                }
                Thread.Sleep(50);
            }
            catch (IOException)
            {
                throw new MachineBusyException(dir, DateTime.UtcNow - start);
            }
        }
    }

    private const int Erofs = 30, Ewouldblock = 11;

    /// <summary>
    /// flock(2) refusing with EWOULDBLOCK is the only sign of another holder; .NET reports it as an
    /// IOException whose HResult is that errno.
    /// </summary>
    private static bool IsLockHeld(IOException e) => e.HResult == Ewouldblock || e.Message.Contains("being used by another process", StringComparison.Ordinal);

    // ---- lazy restore -------------------------------------------------------------------

    /// <summary>Marks a lazy restore whose pages have not all arrived (removed when they have).</summary>
    public const string LazyRestoreMarkerName = "lazy-restore.incomplete";

    /// <summary>
    /// The machine's restored tree is waiting for lazy pages from <paramref name="imagesDir"/>:
    /// written before the restore is saved and removed only after the machine holding every page is
    /// saved, so a command killed at any point leaves the mark on a machine that may lack pages.
    /// </summary>
    public void MarkLazyRestore(string imagesDir, IEnumerable<int> pids)
    {
        string path = Path.Combine(Directory, LazyRestoreMarkerName);
        string tmp = path + ".tmp";
        File.WriteAllText(tmp, imagesDir + "\n" + string.Join(' ', pids) + "\n");
        using (var fs = new FileStream(tmp, FileMode.Open, FileAccess.ReadWrite))
            fs.Flush(flushToDisk: true);
        File.Move(tmp, path, overwrite: true);
        CrashPoints.Hit("lazy.marked");
    }

    /// <summary>Every lazy page has arrived (and the machine holding them is saved).</summary>
    public void ClearLazyRestore()
    {
        File.Delete(Path.Combine(Directory, LazyRestoreMarkerName));
        CrashPoints.Hit("lazy.unmarked");
    }

    /// <summary>The unfinished lazy restore, if any: its images directory and restored pids.</summary>
    public (string ImagesDir, IReadOnlyList<int> Pids)? PendingLazyRestore
    {
        get
        {
            string path = Path.Combine(Directory, LazyRestoreMarkerName);
            if (!File.Exists(path))
                return null;
            var lines = File.ReadAllLines(path);
            var pids = lines.Length > 1
                ? lines[1].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(x => int.TryParse(x, out int v) ? v : 0).Where(v => v > 0).ToList()
                : [];
            return (lines.Length > 0 ? lines[0] : "", pids);
        }
    }

    /// <summary>
    /// A restored process of an unfinished lazy restore is still alive: it must not run (its
    /// missing pages would fault with no daemon to answer) until lazy-pages brought them in.
    /// </summary>
    public bool LazyRestoreBlocksRunning =>
        PendingLazyRestore is { } pending && pending.Pids.Any(pid => Kernel.FindTask(pid) is { Alive: true });

    // ---- running ------------------------------------------------------------------------

    /// <summary>Advances virtual time, running every runnable program (see <see cref="LiveHost"/>).</summary>
    public void Advance(ulong ns) => _live.Advance(ns);

    /// <summary>Runs exactly <paramref name="steps"/> operations of every runnable program (no virtual time passes).</summary>
    public void RunSteps(long steps) => _live.RunSteps(steps);

    // ---- saving -------------------------------------------------------------------------

    /// <summary>Writes the changes since the last save; atomic with respect to a kill at any point.</summary>
    public void Save()
    {
        long gen = _generation + 1;
        var mem = Kernel.Memory;
        int ps = Kernel.Arch.PageSize;
        string journal = "";
        var dirty = mem.DirtyFrames().ToList();
        if (dirty.Count > 0)
        {
            journal = $"frames.journal.{gen}";
            using var js = new FileStream(Path.Combine(Directory, journal), FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
            using var jw = new BinaryWriter(js);
            jw.Write(Magic);
            jw.Write(ps);
            jw.Write((long)dirty.Count);
            int batch = 0;
            foreach (long pfn in dirty)
            {
                jw.Write(pfn);
                jw.Write(mem.Page(pfn));
                if (++batch % CrashBatchFrames == 0)
                {
                    jw.Flush();
                    CrashPoints.Hit("journal.batch");
                }
            }
            jw.Write(Magic);
            jw.Flush();
            js.Flush(flushToDisk: true);
            CrashPoints.Hit("journal.written");
        }
        string swapFile = _swapFile;
        if (Kernel.Swap.ContentsChanged)
        {
            swapFile = $"swap.{gen}.dat";
            using var ss = new FileStream(Path.Combine(Directory, swapFile), FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
            using var sw = new BinaryWriter(ss);
            Kernel.Swap.SaveContents(sw);
            sw.Flush();
            ss.Flush(flushToDisk: true);
            CrashPoints.Hit("swap.written");
        }

        var body = new MemoryStream();
        using (var bw = new BinaryWriter(body, System.Text.Encoding.UTF8, leaveOpen: true))
        {
            bw.Write(gen);
            bw.Write(journal);
            bw.Write(swapFile);
            bw.Write(mem.FrameCountForFile);
            Kernel.SaveState(bw);
        }
        string tmp = Path.Combine(Directory, StateFileName + ".tmp");
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            using var w = new BinaryWriter(fs);
            w.Write(Magic);
            w.Write(body.Length);
            w.Write(Crc(body.GetBuffer().AsSpan(0, (int)body.Length)));
            w.Write(body.GetBuffer(), 0, (int)body.Length);
            w.Flush();
            fs.Flush(flushToDisk: true);
        }
        CrashPoints.Hit("state.tmp");
        File.Move(tmp, Path.Combine(Directory, StateFileName), overwrite: true);
        CrashPoints.Hit("state.renamed");

        // The new state is in place: apply the journal, then drop what the old state used.
        if (journal.Length > 0)
            ApplyJournal(Directory, journal, mem.FrameCountForFile);
        if (swapFile != _swapFile && _swapFile.Length > 0)
            File.Delete(Path.Combine(Directory, _swapFile));
        mem.ClearDirty();
        Kernel.Swap.ContentsChanged = false;
        _generation = gen;
        _swapFile = swapFile;
    }

    private static void ApplyJournal(string dir, string journal, long frameCount)
    {
        string jpath = Path.Combine(dir, journal);
        using (var frames = new FileStream(Path.Combine(dir, FramesFileName), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite))
        {
            using var js = new FileStream(jpath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
            using var jr = new BinaryReader(js);
            if (jr.ReadUInt64() != Magic)
                throw new MachineStateException($"{jpath}: not a frame journal");
            int ps = jr.ReadInt32();
            if (frames.Length < frameCount * ps)
                frames.SetLength(frameCount * ps);
            long n = jr.ReadInt64();
            var page = new byte[ps];
            for (long i = 0; i < n; i++)
            {
                long pfn = jr.ReadInt64();
                js.ReadExactly(page);
                frames.Position = (pfn - Mm.PhysicalMemory.FirstPfn) * ps;
                frames.Write(page);
                if ((i + 1) % CrashBatchFrames == 0)
                {
                    frames.Flush();
                    CrashPoints.Hit("journal.apply");
                }
            }
            if (jr.ReadUInt64() != Magic)
                throw new MachineStateException($"{jpath}: truncated frame journal");
            frames.Flush(flushToDisk: true);
        }
        CrashPoints.Hit("journal.applied");
        File.Delete(jpath);
    }

    private static ulong Crc(ReadOnlySpan<byte> data) => System.IO.Hashing.Crc32.HashToUInt32(data);

    // ---- loading ------------------------------------------------------------------------

    private static SimMachine Load(string dir, FileStream lockStream)
    {
        string statePath = Path.Combine(dir, StateFileName);
        byte[] all;
        try
        {
            all = File.ReadAllBytes(statePath);
        }
        catch (IOException e)
        {
            throw new MachineStateException($"cannot read {statePath}: {e.Message}", e);
        }
        if (all.Length >= 24 && BitConverter.ToUInt64(all, 0) is var old && (old == MagicV1 || old == MagicV2))
            throw new MachineStateException($"{statePath} was written by an older criu-sharp (state v{(old == MagicV1 ? 1 : 2)}); recreate the machine with spawn");
        if (all.Length < 24 || BitConverter.ToUInt64(all, 0) != Magic)
            throw new MachineStateException($"{statePath} is not a criu-sharp machine state");
        long len = BitConverter.ToInt64(all, 8);
        ulong crc = BitConverter.ToUInt64(all, 16);
        if (len != all.Length - 24 || Crc(all.AsSpan(24)) != crc)
            throw new MachineStateException($"{statePath} is damaged (length or checksum mismatch)");
        using var r = new BinaryReader(new MemoryStream(all, 24, (int)len, writable: false));
        long gen = r.ReadInt64();
        string journal = r.ReadString();
        string swapFile = r.ReadString();
        long frames = r.ReadInt64();
        if (journal.Length > 0 && File.Exists(Path.Combine(dir, journal)))
            ApplyJournal(dir, journal, frames); // a save was killed after its state was in place: finish it
        foreach (var stale in System.IO.Directory.EnumerateFiles(dir, "frames.journal.*"))
            File.Delete(stale);
        foreach (var stale in System.IO.Directory.EnumerateFiles(dir, "swap.*.dat"))
            if (Path.GetFileName(stale) != swapFile)
                File.Delete(stale);
        File.Delete(Path.Combine(dir, StateFileName + ".tmp"));

        Kernel kernel;
        try
        {
            kernel = Kernel.LoadState(r);
        }
        catch (Exception e) when (e is EndOfStreamException or InvalidDataException or ArgumentException or IndexOutOfRangeException)
        {
            throw new MachineStateException($"{statePath} is damaged: {e.Message}", e);
        }
        var m = new SimMachine(dir, lockStream, kernel, gen, swapFile);
        if (swapFile.Length > 0)
        {
            using var ss = new FileStream(Path.Combine(dir, swapFile), FileMode.Open, FileAccess.Read);
            using var sr = new BinaryReader(ss);
            kernel.Swap.LoadContents(sr);
        }
        m.MapFrames(frames);
        kernel.Memory.ClearDirty();
        kernel.Swap.ContentsChanged = false;
        return m;
    }

    private void MapFrames(long frames)
    {
        string path = Path.Combine(Directory, FramesFileName);
        long bytes = frames * Kernel.Arch.PageSize;
        if (frames <= 0 || !File.Exists(path))
            return;
        if (new FileInfo(path).Length < bytes)
            throw new MachineStateException($"{path} is shorter than the state says ({bytes} bytes)");
        var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        _map = MemoryMappedFile.CreateFromFile(fs, null, 0, MemoryMappedFileAccess.CopyOnWrite, HandleInheritability.None, leaveOpen: false);
        _view = _map.CreateViewAccessor(0, bytes, MemoryMappedFileAccess.CopyOnWrite);
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        Kernel.Memory.AttachMapping(p + _view.PointerOffset, frames);
    }

    public void Dispose()
    {
        if (_view is not null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
        _lock.Dispose();
    }
}

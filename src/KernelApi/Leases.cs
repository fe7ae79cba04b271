using System.Runtime.InteropServices;

namespace CriuSharp.KernelApi;

/// <summary>
/// A frozen process tree (<see cref="IKernel.Freeze"/>). While it is active the tree's memory does
/// not change, so page references taken by <see cref="IKernel.SplicePages"/> show what was dumped;
/// <see cref="Thaw"/> (or disposing it) lets the tree run again and ends every
/// <see cref="PageLease"/> taken under it.
/// </summary>
public abstract class FreezeLease : IDisposable
{
    private const long StageChunkBytes = 64L << 20;
    private int _active = 1;
    private readonly List<(nint Chunk, nuint Size)> _stageChunks = [];
    private nint _stageCur;
    private long _stageLeft;

    protected FreezeLease(int rootPid) => RootPid = rootPid;

    /// <summary>
    /// Copies <paramref name="pages"/> (whole 4 KiB pages) into memory that belongs to this freeze
    /// and fills <paramref name="refs"/> with one address per page, as a splice of them would: for
    /// a kernel whose splice copies anyway (<see cref="KernelCapabilities.SpliceCopies"/>), a
    /// caller that already read the bytes stages them instead of reading them again. The memory
    /// is freed by the thaw, which also ends every <see cref="PageLease"/> of it.
    /// </summary>
    public unsafe void StageCopy(ReadOnlySpan<byte> pages, Span<nint> refs)
    {
        if ((pages.Length & 4095) != 0 || refs.Length != pages.Length >> 12)
            throw new ArgumentException("whole 4 KiB pages, one reference each");
        byte* dst = Stage(pages.Length);
        pages.CopyTo(new Span<byte>(dst, pages.Length));
        for (int i = 0; i < refs.Length; i++)
            refs[i] = (nint)(dst + ((long)i << 12));
    }

    /// <summary>Bump-allocates <paramref name="bytes"/> (page-aligned) of staging memory, freed by the thaw.</summary>
    protected unsafe byte* Stage(long bytes)
    {
        lock (_stageChunks)
        {
            if (!Active)
                throw new InvalidOperationException("staging after the tree was thawed");
            if (_stageLeft < bytes)
            {
                long size = Math.Max(bytes, StageChunkBytes);
                _stageCur = (nint)AllocateStaging((nuint)size);
                _stageChunks.Add((_stageCur, (nuint)size));
                _stageLeft = size;
            }
            byte* p = (byte*)_stageCur;
            _stageCur += (nint)bytes;
            _stageLeft -= bytes;
            return p;
        }
    }

    /// <summary>One chunk of staging memory (page-aligned, <paramref name="size"/> bytes); a kernel may back it differently.</summary>
    protected virtual unsafe void* AllocateStaging(nuint size) => NativeMemory.AlignedAlloc(size, 4096);

    /// <summary>Frees a chunk of <see cref="AllocateStaging"/>.</summary>
    protected virtual unsafe void FreeStaging(void* chunk, nuint size) => NativeMemory.AlignedFree(chunk);

    private unsafe void FreeStaging()
    {
        lock (_stageChunks)
        {
            foreach (var (c, size) in _stageChunks)
                FreeStaging((void*)c, size);
            _stageChunks.Clear();
            _stageLeft = 0;
        }
    }

    public int RootPid { get; }

    /// <summary>True until the tree is thawed.</summary>
    public bool Active => Volatile.Read(ref _active) != 0;

    /// <summary>Thaws the tree (once; later calls do nothing).</summary>
    public void Thaw()
    {
        if (Interlocked.Exchange(ref _active, 0) != 0)
        {
            FreeStaging();
            ThawTree();
        }
    }

    /// <summary>
    /// Ends the freeze leaving every task of the tree stopped as SIGSTOP stops it, to run again
    /// only on SIGCONT (CRIU's --leave-stopped: criu/seize.c switches the tree to TASK_STOPPED
    /// before detaching). Does nothing once the tree has been thawed.
    /// </summary>
    public void ThawStopped()
    {
        if (Interlocked.Exchange(ref _active, 0) != 0)
        {
            FreeStaging();
            ThawTreeStopped();
        }
    }

    /// <summary>The kernel's thaw of the tree.</summary>
    protected abstract void ThawTree();

    /// <summary>The kernel's thaw of the tree into a group stop (see <see cref="ThawStopped"/>).</summary>
    protected abstract void ThawTreeStopped();

    public void Dispose()
    {
        Thaw();
        GC.SuppressFinalize(this);
    }
}

/// <summary>
/// Spliced pages in flight: a range of page references (one host address per 4 KiB image page)
/// that another thread may read while the tree of <see cref="Freeze"/> stays frozen. Reading
/// them after the thaw throws instead of reading memory the task has changed (or freed).
/// </summary>
public readonly struct PageLease
{
    private readonly nint[] _refs;
    private readonly int _offset;

    public PageLease(FreezeLease freeze, nint[] refs, int offset, int count)
    {
        ArgumentNullException.ThrowIfNull(freeze);
        ArgumentNullException.ThrowIfNull(refs);
        ArgumentOutOfRangeException.ThrowIfNegative(offset);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(count, refs.Length - offset);
        Freeze = freeze;
        _refs = refs;
        _offset = offset;
        Count = count;
    }

    public FreezeLease Freeze { get; }

    /// <summary>Pages (4 KiB each) in the lease.</summary>
    public int Count { get; }

    /// <summary>The page addresses; throws when the tree has been thawed since the pages were spliced.</summary>
    public ReadOnlySpan<nint> Pages => Freeze.Active
        ? new ReadOnlySpan<nint>(_refs, _offset, Count)
        : throw new InvalidOperationException("spliced pages read after the tree was thawed");
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace CriuSharp.SimKernel.Mm;

/// <summary>
/// Page frames addressed by PFN. Contents live in large chunks (64 MiB each), allocated lazily;
/// per-frame metadata is two flat arrays (map count and kind), 5 bytes a frame.
///
///   pfn ──► chunk[pfn >> chunkShift] ──► bytes [(pfn &amp; chunkMask) &lt;&lt; pageShift, +pageSize)
///   pfn ──► mapCount[pfn], kind[pfn]
///
/// Huge pages are runs of <c>PagesPerHuge</c> consecutive, aligned frames inside one chunk, so a
/// sub-page's PFN is head + index, as pagemap reports it.
/// </summary>
public sealed unsafe partial class PhysicalMemory
{
    /// <summary>HugeTlb: a page of a hugetlb pool, owned by the pool (and a file or a private mapping), never freed by an unmap.</summary>
    public enum FrameKind : byte { Free = 0, Anon = 1, PageCache = 2, Zero = 3, Reserved = 4, HugeTlb = 5 }

    private const int ChunkBytesShift = 26; // 64 MiB
    private readonly int _pageShift;
    private readonly int _chunkShift;
    private readonly long _chunkMask;
    private readonly int _hugeFrames;
    private byte[]?[] _chunks = new byte[]?[16];
    /// <summary>Address of each allocated chunk's first byte (chunks are pinned), 0 for none.</summary>
    private nint[] _chunkBase = new nint[16];
    private int[] _mapCount = new int[1 << 16];
    private FrameKind[] _kind = new FrameKind[1 << 16];
    private long[] _free = new long[1024];
    private int _freeCount;
    private readonly Stack<long> _freeHuge = new();
    private long _next;
    private ulong[] _dirty = new ulong[(1 << 16) / 64];
    /// <summary>Frames [FirstPfn, FirstPfn + _mappedFrames) live in a copy-on-write mapping of the machine's frames file.</summary>
    private byte* _mapped;
    private long _mappedFrames;

    /// <summary>PFNs start here so that no real page reads PFN 0.</summary>
    public const long FirstPfn = 0x1000;

    public PhysicalMemory(int pageShift, int pagesPerHuge, long totalBytes)
    {
        _pageShift = pageShift;
        _chunkShift = ChunkBytesShift - pageShift;
        _chunkMask = (1L << _chunkShift) - 1;
        _hugeFrames = pagesPerHuge;
        TotalFrames = totalBytes >> pageShift;
        _next = FirstPfn;
        ZeroPfn = AllocateRaw(FrameKind.Zero);
        PageMut(ZeroPfn).Clear(); // chunks are allocated uninitialised; every other frame is cleared on allocation
    }

    public int PageSize => 1 << _pageShift;
    public long TotalFrames { get; }
    public long UsedFrames { get; private set; }
    /// <summary>The shared zero page: mapped read-only by read faults on anonymous memory (S4).</summary>
    public long ZeroPfn { get; }
    public long HighestPfn => _next;
    /// <summary>Bytes of page-content chunks allocated so far (contents, not metadata).</summary>
    public long ContentBytesAllocated { get; private set; }

    public FrameKind Kind(long pfn) => _kind[pfn];
    public int MapCount(long pfn) => _mapCount[pfn];
    public void SetKind(long pfn, FrameKind k) => _kind[pfn] = k;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Map(long pfn) => _mapCount[pfn]++;

    /// <summary>Drops one mapping; frees an anonymous frame when nothing maps it any more.</summary>
    public void Unmap(long pfn)
    {
        int c = --_mapCount[pfn];
        if (c == 0 && _kind[pfn] == FrameKind.Anon)
            Free(pfn);
    }

    /// <summary>The frame's contents, for reading.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ReadOnlySpan<byte> Page(long pfn) => Frame(pfn);

    /// <summary>The frame's contents, for writing: marks the frame modified so the machine saves it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> PageMut(long pfn)
    {
        // Tested before set: in steady state the bit is already set, and a store-free path lets
        // the host CPU run neighbouring simulated stores without ordering them on this word.
        ref ulong w = ref _dirty[pfn >> 6];
        ulong bit = 1UL << (int)(pfn & 63);
        if ((w & bit) == 0)
            w |= bit;
        return Frame(pfn);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private unsafe Span<byte> Frame(long pfn) =>
        new(At(_mapped, _mappedFrames, _chunkBase, _pageShift, _chunkShift, _chunkMask, pfn), 1 << _pageShift);

    /// <summary>
    /// Host address of frame <paramref name="pfn"/>: in the mapped frames file, else in its
    /// (pinned) chunk. One definition for the spans above and the store path's window below.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static byte* At(byte* mapped, long mappedFrames, nint[] chunkBase, int pageShift, int chunkShift, long chunkMask, long pfn)
    {
        long rel = pfn - FirstPfn;
        if ((ulong)rel < (ulong)mappedFrames)
            return mapped + (rel << pageShift);
        return (byte*)chunkBase[rel >> chunkShift] + ((rel & chunkMask) << pageShift);
    }

    /// <summary>
    /// Where frames live, read once for a run of stores that allocate nothing (see
    /// <see cref="FrameWindow"/>): valid until the next frame allocation.
    /// </summary>
    internal FrameWindow Window() => new(this);

    /// <summary>
    /// A snapshot of the frame arrays for the store fast path: the frame's address and its
    /// modified bit without the per-call field loads and span checks of <see cref="PageMut"/>.
    /// </summary>
    internal readonly ref struct FrameWindow
    {
        private readonly ulong[] _dirty;
        private readonly nint[] _chunkBase;
        private readonly byte* _mapped;
        private readonly long _mappedFrames;
        private readonly int _pageShift, _chunkShift;
        private readonly long _chunkMask;

        public FrameWindow(PhysicalMemory m)
        {
            _dirty = m._dirty;
            _chunkBase = m._chunkBase;
            _mapped = m._mapped;
            _mappedFrames = m._mappedFrames;
            _pageShift = m._pageShift;
            _chunkShift = m._chunkShift;
            _chunkMask = m._chunkMask;
        }

        /// <summary>The address of byte <paramref name="offset"/> of frame <paramref name="pfn"/>, for reading.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public byte* Peek(long pfn, ulong offset) =>
            At(_mapped, _mappedFrames, _chunkBase, _pageShift, _chunkShift, _chunkMask, pfn) + offset;

        /// <summary>The address of byte <paramref name="offset"/> of frame <paramref name="pfn"/>, marked modified.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public byte* Mut(long pfn, ulong offset)
        {
            ref ulong w = ref _dirty[pfn >> 6];
            ulong bit = 1UL << (int)(pfn & 63);
            if ((w & bit) == 0)
                w |= bit;
            return Peek(pfn, offset);
        }
    }

    /// <summary>Host address of frame <paramref name="pfn"/>'s first byte (stable: chunks are pinned, the frames file stays mapped).</summary>
    public nint Address(long pfn) => (nint)At(_mapped, _mappedFrames, _chunkBase, _pageShift, _chunkShift, _chunkMask, pfn);

    /// <summary>A zeroed frame, or -1 when the machine's memory is exhausted.</summary>
    public long AllocateZeroed(FrameKind kind)
    {
        if (UsedFrames >= TotalFrames)
            return -1;
        long pfn = AllocateRaw(kind);
        PageMut(pfn).Clear();
        return pfn;
    }

    /// <summary>An aligned run of huge-page frames, zeroed; -1 when none can be had.</summary>
    public long AllocateHuge()
    {
        if (UsedFrames + _hugeFrames > TotalFrames)
            return -1;
        long head;
        if (_freeHuge.Count > 0)
            head = _freeHuge.Pop();
        else
        {
            long aligned = (_next + _hugeFrames - 1) & ~((long)_hugeFrames - 1);
            // Keep the run inside one chunk; frames skipped for alignment go to the free list.
            for (long p = _next; p < aligned; p++)
                ReleaseToFreeList(EnsureFrame(p));
            head = aligned;
            _next = aligned + _hugeFrames;
            EnsureCapacity(_next);
        }
        for (long p = head; p < head + _hugeFrames; p++)
        {
            _kind[p] = FrameKind.Anon;
            _mapCount[p] = 0;
            PageMut(p).Clear();
        }
        UsedFrames += _hugeFrames;
        return head;
    }

    /// <summary>Returns a whole huge run at once (used when an unsplit huge page is freed).</summary>
    public void FreeHuge(long head)
    {
        for (long p = head; p < head + _hugeFrames; p++)
        {
            _kind[p] = FrameKind.Free;
            _mapCount[p] = 0;
        }
        UsedFrames -= _hugeFrames;
        _freeHuge.Push(head);
    }

    public void Free(long pfn)
    {
        if (_kind[pfn] == FrameKind.Free || _kind[pfn] == FrameKind.Zero)
            return;
        _kind[pfn] = FrameKind.Free;
        _mapCount[pfn] = 0;
        UsedFrames--;
        ReleaseToFreeList(pfn);
    }

    private void ReleaseToFreeList(long pfn)
    {
        if (_freeCount == _free.Length)
            Array.Resize(ref _free, _free.Length * 2);
        _free[_freeCount++] = pfn;
    }

    private long AllocateRaw(FrameKind kind)
    {
        long pfn = _freeCount > 0 ? _free[--_freeCount] : EnsureFrame(_next++);
        _kind[pfn] = kind;
        _mapCount[pfn] = 0;
        UsedFrames++;
        return pfn;
    }

    private long EnsureFrame(long pfn)
    {
        EnsureCapacity(pfn + 1);
        return pfn;
    }

    private void EnsureCapacity(long endPfn)
    {
        if (endPfn > _mapCount.Length)
        {
            // Grow by whole chunks plus an eighth, not by doubling: these arrays are most of the
            // per-page metadata, and doubling would leave up to half of them unused.
            long chunkFrames = 1L << _chunkShift;
            long n = Math.Max(endPfn, _mapCount.Length + _mapCount.Length / 8);
            n = (n + chunkFrames - 1) / chunkFrames * chunkFrames;
            Array.Resize(ref _mapCount, (int)n);
            Array.Resize(ref _kind, (int)n);
            Array.Resize(ref _dirty, (int)((n + 63) / 64));
        }
        long lastChunk = (endPfn - 1 - FirstPfn) >> _chunkShift;
        if (lastChunk >= _chunks.Length)
        {
            Array.Resize(ref _chunks, (int)Math.Max(lastChunk + 1, _chunks.Length * 2));
            Array.Resize(ref _chunkBase, _chunks.Length);
        }
        for (long c = 0; c <= lastChunk; c++)
        {
            // Chunks entirely inside the mapped frames file are never needed.
            if (_chunks[c] is null && ((c + 1) << _chunkShift) > _mappedFrames)
            {
                // Pinned so its address is stable for the host's huge-page advice.
                _chunks[c] = GC.AllocateUninitializedArray<byte>(1 << ChunkBytesShift, pinned: true);
                Interop.Libc.AdviseHugePages(_chunks[c]!);
                _chunkBase[c] = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_chunks[c]!));
                ContentBytesAllocated += 1L << ChunkBytesShift;
            }
        }
    }
}

using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using CriuSharp.ImageFormat.Images;

namespace CriuSharp.ImageFormat;

/// <summary>Copies the 4 KiB pages at [va, va + destination.Length) into destination; throws when they cannot be read.</summary>
public delegate void PageFetch(ulong va, Span<byte> destination);

/// <summary>Counters of one pagemap + pages pair, named as in CRIU's dump stats where CRIU has a name.</summary>
public sealed class PageWriteStats
{
    /// <summary>Pages in PE_PRESENT entries (what CRIU counts as pages_written).</summary>
    public ulong PagesWritten { get; internal set; }
    public ulong PagesSkippedParent { get; internal set; }
    /// <summary>Pages recorded PE_LAZY with no bytes in the image.</summary>
    public ulong PagesLazy { get; internal set; }
    public ulong ZeroPagesSkipped { get; internal set; }
    /// <summary>Pages inside blocks that did not shrink and were stored uncompressed.</summary>
    public ulong PagesStoredRaw { get; internal set; }
    /// <summary>Bytes CRIU's raw layout would hold: PagesWritten * 4096.</summary>
    public ulong BytesRaw { get; internal set; }
    /// <summary>Bytes actually in the pages file.</summary>
    public ulong BytesStored { get; internal set; }
    public ulong Blocks { get; internal set; }
    /// <summary>Pages recorded as deltas against the parent chain (PE_DELTA).</summary>
    public ulong PagesDelta { get; internal set; }
    /// <summary>Bytes of those deltas as encoded (XBZRLE), before deltas-N.img's block compression.</summary>
    public ulong BytesDelta { get; internal set; }
    /// <summary>Bytes in deltas-N.img: <see cref="BytesDelta"/> compressed in blocks (or as encoded, in a raw image).</summary>
    public ulong BytesDeltaStored { get; internal set; }

    /// <summary>Counts pages that went to another writer (a page server) rather than through a <see cref="PagemapWriter"/>.</summary>
    public void AddTransferred(ulong pagesWritten, ulong pagesSkippedParent, ulong bytesSent)
    {
        PagesWritten += pagesWritten;
        PagesSkippedParent += pagesSkippedParent;
        BytesRaw += pagesWritten << PageGeometry.PageShift;
        BytesStored += bytesSent;
    }

    /// <summary>Counts delta pages sent to a page server (<paramref name="bytesSent"/>: their deltas, which travel as encoded).</summary>
    public void AddDeltasTransferred(ulong pages, ulong bytesSent)
    {
        PagesDelta += pages;
        BytesDelta += bytesSent;
        BytesDeltaStored += bytesSent;
    }

    public void Add(PageWriteStats other)
    {
        PagesDelta += other.PagesDelta;
        BytesDelta += other.BytesDelta;
        BytesDeltaStored += other.BytesDeltaStored;
        PagesWritten += other.PagesWritten;
        PagesSkippedParent += other.PagesSkippedParent;
        PagesLazy += other.PagesLazy;
        ZeroPagesSkipped += other.ZeroPagesSkipped;
        PagesStoredRaw += other.PagesStoredRaw;
        BytesRaw += other.BytesRaw;
        BytesStored += other.BytesStored;
        Blocks += other.Blocks;
    }
}

/// <summary>
/// Writes one pagemap (head + entries) and the pages file it names, in CRIU's order: entries by
/// ascending vaddr, bytes of PE_PRESENT entries appended to pages-N.img as they come.
/// <code>
///  AddPresent(0x1000, 3 pages)   AddParentHole(0x8000, 2)   AddPresent(0xa000, 1 page)
///      │                              │ (no bytes)               │
///      ▼                              ▼                          ▼
///  pagemap: head{pages_id=N} │ {0x1000,3,PRESENT} │ {0x8000,2,PARENT} │ {0xa000,1,PRESENT}
///  pages-N: [ block0 | block1 ... of entry 0 ]                        [ blocks of entry 2 ]
/// </code>
/// With compression, each PE_PRESENT entry is cut into blocks of BlockPages pages that never span
/// entries; all-zero pages are left out (bit set in zero_pages), every block's stored size, raw
/// flag and checksum go into the entry, so a reader finds any page by summing sizes.
/// The pages go to any stream (a file, a socket to a page server, Stream.Null for benchmarks).
/// </summary>
public sealed class PagemapWriter : IDisposable
{
    private const int OutFlushThreshold = 1 << 20;
    /// <summary>Compressed output up to this size is gathered before it is written (larger output is written as it is).</summary>
    private const int SmallJobOut = 64 << 10;
    private readonly Stream _pages;
    private readonly bool _leaveOpen;
    private readonly Action<PagemapWriter>? _onFinish;
    private readonly Action<PagemapWriter>? _onAbort;
    private readonly List<pagemap_entry> _entries = [];
    private readonly BlockCodec? _codec;
    private readonly byte[] _out;
    private readonly byte[] _stage;
    private readonly int _blockPages;
    private readonly int _slotSize;
    private int _outLen;
    private ulong _nextFree;
    private bool _finished;
    private const long WritebackBytes = 8 << 20;
    private long _streamBytes;
    private long _writebackFrom;
    /// <summary>Input bytes of one compression job (a run of blocks one worker compresses in order).</summary>
    /// <remarks>2 MiB jobs, 8 per worker in flight: measured best on the 2-core machine (1 MiB jobs
    /// left the workers waiting for the writing thread about a tenth of the time).</remarks>
    private const int JobBytes = 2 << 20;
    private const int JobsInFlightPerWorker = 8;
    /// <summary>How much of a job a worker fetches in one call (see <see cref="Run"/>).</summary>
    private const int FetchBytes = 1 << 20;
    private readonly int _jobBlocks;
    private readonly Queue<Job> _pending = new();
    private readonly Stack<Job> _spareJobs = new();
    private System.Collections.Concurrent.BlockingCollection<Job>? _work;
    private Thread[]? _threads;
    private volatile bool _abandoned;
    private bool _disposed;

    public PagemapWriter(Stream pagesOut, uint pagesId, PageStoreOptions options, bool leaveOpen = false)
        : this(pagesOut, pagesId, options, leaveOpen, null, null)
    {
    }

    internal PagemapWriter(Stream pagesOut, uint pagesId, PageStoreOptions options, bool leaveOpen,
        Action<PagemapWriter>? onFinish, Action<PagemapWriter>? onAbort)
    {
        options.Validate();
        _pages = pagesOut;
        _leaveOpen = leaveOpen;
        _onFinish = onFinish;
        _onAbort = onAbort;
        Options = options;
        Head = new pagemap_head { PagesId = pagesId };
        if (pagesOut is FileStream { CanSeek: true } start)
            _streamBytes = _writebackFrom = start.Position;
        if (options.Compression != PageCompression.None)
        {
            _blockPages = options.BlockPages;
            Head.Compression = (uint)options.Compression;
            Head.BlockPages = (uint)options.BlockPages;
            Head.Checksum = (uint)BlockChecksum.Xxh3_64;
            Head.CompressionLevel = options.EffectiveLevel;
            _codec = new BlockCodec(options.Compression, options.EffectiveLevel);
            _slotSize = BlockCodec.MaxCompressedSize(options.Compression, _blockPages * PageGeometry.PageSize);
            _stage = new byte[_blockPages * PageGeometry.PageSize];
            _out = new byte[OutFlushThreshold + _slotSize];
            _jobBlocks = Math.Max(1, JobBytes / (_blockPages * PageGeometry.PageSize));
        }
        else
        {
            _stage = [];
            _out = new byte[OutFlushThreshold];
        }
    }

    public PageStoreOptions Options { get; }
    public pagemap_head Head { get; }
    public uint PagesId => Head.PagesId;
    public IReadOnlyList<pagemap_entry> Entries => _entries;
    public PageWriteStats Stats { get; } = new();

    /// <summary>
    /// Called on the writing thread, in address order, with (vaddr, digest) for every non-zero 4 KiB
    /// page stored (see <see cref="PageDigest"/>); all-zero pages are not reported. Set it before
    /// the first page is added. The digests are computed where the page is read for compression,
    /// so a caller that checksums the memory it dumps does not read it a second time.
    /// </summary>
    public Action<ulong, ulong>? OnPageDigest { get; set; }

    /// <summary>
    /// Pages whose bytes go into this image. <paramref name="pages"/> is a whole number of 4 KiB
    /// pages starting at <paramref name="vaddr"/>; <paramref name="lazy"/> adds PE_LAZY (the bytes
    /// are still stored, as CRIU does for lazy-capable pages in a normal dump). The bytes are
    /// consumed before the call returns.
    /// </summary>
    public unsafe void AddPresent(ulong vaddr, ReadOnlySpan<byte> pages, bool lazy = false)
    {
        if (pages.Length == 0 || (pages.Length & (PageGeometry.PageSize - 1)) != 0)
            throw new ArgumentException($"page data must be a non-zero multiple of {PageGeometry.PageSize} bytes, got {pages.Length}", nameof(pages));
        int nr = pages.Length >> PageGeometry.PageShift;
        var entry = BeginPresent(vaddr, (ulong)nr, lazy);
        fixed (byte* p = pages)
        {
            if (_codec is null)
            {
                AppendRaw(pages);
                DigestPages(vaddr, new PageSource(p, null, 0), nr);
            }
            else
            {
                QueueBlocks(entry, vaddr, new PageSource(p, null, 0), nr);
                CommitAll(); // the span is only ours until we return
            }
        }
        _entries.Add(entry);
    }

    /// <summary>
    /// Pages given by reference, as pages spliced into a pipe: <paramref name="pageAddresses"/>
    /// holds the host address of each 4 KiB page starting at <paramref name="vaddr"/>. The bytes
    /// are read later, by the compression workers, so they must stay allocated and unchanged
    /// until <see cref="Finish"/> returns (a frozen task's memory does).
    /// </summary>
    public unsafe void AddPresentByReference(ulong vaddr, ReadOnlySpan<nint> pageAddresses)
    {
        if (pageAddresses.Length == 0)
            throw new ArgumentException("no pages", nameof(pageAddresses));
        int nr = pageAddresses.Length;
        var entry = BeginPresent(vaddr, (ulong)nr, lazy: false);
        var addrs = pageAddresses.ToArray();
        if (_codec is null)
        {
            for (int i = 0; i < nr; i++)
                AppendRaw(new ReadOnlySpan<byte>((byte*)addrs[i], PageGeometry.PageSize));
            DigestPages(vaddr, new PageSource(null, addrs, 0), nr);
        }
        else
        {
            QueueBlocks(entry, vaddr, new PageSource(null, addrs, 0), nr);
        }
        _entries.Add(entry);
    }

    /// <summary>
    /// Pages fetched where they are compressed: <paramref name="fetch"/> copies
    /// <paramref name="nrPages"/> pages from <paramref name="vaddr"/> on, up to 1 MiB at a time, on
    /// the compression workers (on the calling thread for an entry of one block), straight into a
    /// page-aligned buffer each worker keeps (a frozen task read with process_vm_readv, with no
    /// staging copy). The pages must not change until
    /// <see cref="Finish"/> returns; <paramref name="fetch"/> may be called from several threads
    /// at once, and what it throws is rethrown by a later call on this writer.
    /// </summary>
    public unsafe void AddPresentByFetch(ulong vaddr, int nrPages, PageFetch fetch)
    {
        ArgumentNullException.ThrowIfNull(fetch);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(nrPages);
        var entry = BeginPresent(vaddr, (ulong)nrPages, lazy: false);
        if (_codec is null)
        {
            // Raw layout: the writing thread fetches, a bounded piece at a time.
            const int Piece = 256;
            if (_fetchBuf.Array is null)
                _fetchBuf = PageAlignedBuffer.Allocate(Piece << PageGeometry.PageShift);
            var buf = _fetchBuf;
            for (int done = 0; done < nrPages; done += Piece)
            {
                int n = Math.Min(Piece, nrPages - done);
                ulong va = vaddr + ((ulong)done << PageGeometry.PageShift);
                var span = buf.AsSpan(0, n << PageGeometry.PageShift);
                fetch(va, span);
                AppendRaw(span);
                fixed (byte* p = span)
                    DigestPages(va, new PageSource(p, null, 0), n);
            }
        }
        else
        {
            QueueBlocks(entry, vaddr, new PageSource(null, null, 0, fetch), nrPages);
        }
        _entries.Add(entry);
    }

    /// <summary>Where fetched pages are read to (page-aligned: <see cref="PageAlignedBuffer"/>).</summary>
    private ArraySegment<byte> _fetchBuf;

    private pagemap_entry BeginPresent(ulong vaddr, ulong nr, bool lazy)
    {
        var entry = NewEntry(vaddr, nr, PagemapFlags.Present | (lazy ? PagemapFlags.Lazy : 0));
        Stats.PagesWritten += nr;
        Stats.BytesRaw += nr << PageGeometry.PageShift;
        if (_codec is null)
            Stats.BytesStored += nr << PageGeometry.PageShift;
        return entry;
    }

    /// <summary>Raw layout: the writing thread digests the pages itself.</summary>
    private void DigestPages(ulong vaddr, PageSource src, int nr)
    {
        if (OnPageDigest is not { } report)
            return;
        for (int i = 0; i < nr; i++)
        {
            ulong va = vaddr + ((ulong)i << PageGeometry.PageShift);
            ulong d = PageDigest.Of(va, src.Page(i));
            if (d != 0)
                report(va, d);
        }
    }

    /// <summary>An unchanged run whose bytes live in the parent image set (PE_PARENT, no bytes here).</summary>
    public void AddParentHole(ulong vaddr, ulong nrPages)
    {
        _entries.Add(NewEntry(vaddr, nrPages, PagemapFlags.Parent));
        Stats.PagesSkippedParent += nrPages;
    }

    /// <summary>
    /// One page recorded as a delta (<see cref="PageDelta"/>) against the same page in the parent
    /// chain: PE_DELTA, the delta appended to deltas-N.img, its size and the XXH3-64 of the
    /// page's new contents in the entry (so restore can tell a wrong base from a right one).
    /// Adjacent delta pages share an entry.
    /// </summary>
    public void AddDelta(ulong vaddr, ReadOnlySpan<byte> delta, ulong newPageChecksum)
    {
        if (_entries.Count > 0 && _nextFree == vaddr && PagemapImage.FlagsOf(_entries[^1]) == PagemapFlags.Delta
            && _entries[^1].NrPages < uint.MaxValue && !_finished)
        {
            var last = _entries[^1];
            last.NrPages++;
            if (Options.WriteNrPages64)
                last.NrPages64 = last.NrPages;
            _nextFree += PageGeometry.PageSize;
            last.DeltaSizes.Add((uint)delta.Length);
            last.DeltaChecksums.Add(newPageChecksum);
        }
        else
        {
            var e = NewEntry(vaddr, 1, PagemapFlags.Delta);
            e.DeltaSizes.Add((uint)delta.Length);
            e.DeltaChecksums.Add(newPageChecksum);
            _entries.Add(e);
        }
        Head.DeltaEncoding = (uint)DeltaEncoding.Xbzrle;
        AppendDelta(delta);
        Stats.PagesDelta++;
        Stats.BytesDelta += (ulong)delta.Length;
    }

    /// <summary>
    /// The bytes of deltas-N.img: every PE_DELTA page's delta in entry order (empty if none) —
    /// in a compressed image, that stream cut into blocks of the pages' block size, each
    /// compressed with the pages' codec (or kept raw when that is not smaller), the stored sizes
    /// in pagemap_head.delta_block_sizes. A delta's literal bytes are the page's own data, and
    /// the deltas of neighbouring pages resemble each other as the pages do.
    /// </summary>
    public ReadOnlyMemory<byte> DeltaBytes => _deltas.WrittenMemory;

    /// <summary>Encoded delta bytes in the blocks compressed so far (see <see cref="DeltaBlocksStoredBytes"/>).</summary>
    public long DeltaBlocksRawBytes { get; private set; }

    /// <summary>What those blocks store: the ratio to <see cref="DeltaBlocksRawBytes"/> is what a delta costs per encoded byte.</summary>
    public long DeltaBlocksStoredBytes { get; private set; }

    private readonly System.Buffers.ArrayBufferWriter<byte> _deltas = new();
    private byte[] _deltaPending = [];
    private int _deltaPendingLength;
    private byte[] _deltaOut = [];
    private BlockCodec? _deltaCodec;

    private void AppendDelta(ReadOnlySpan<byte> delta)
    {
        if (Options.Compression == PageCompression.None)
        {
            System.Buffers.BuffersExtensions.Write(_deltas, delta);
            Stats.BytesDeltaStored += (ulong)delta.Length;
            return;
        }
        int blockBytes = _blockPages * PageGeometry.PageSize;
        if (_deltaPending.Length == 0)
            _deltaPending = new byte[blockBytes];
        while (!delta.IsEmpty)
        {
            int take = Math.Min(blockBytes - _deltaPendingLength, delta.Length);
            delta[..take].CopyTo(_deltaPending.AsSpan(_deltaPendingLength));
            _deltaPendingLength += take;
            delta = delta[take..];
            if (_deltaPendingLength == blockBytes)
                FlushDeltaBlock();
        }
    }

    private void FlushDeltaBlock()
    {
        if (_deltaPendingLength == 0)
            return;
        var plain = _deltaPending.AsSpan(0, _deltaPendingLength);
        _deltaCodec ??= new BlockCodec(Options.Compression, Options.EffectiveLevel);
        if (_deltaOut.Length == 0)
            _deltaOut = new byte[BlockCodec.MaxCompressedSize(Options.Compression, _deltaPending.Length)];
        int n = _deltaCodec.Compress(plain, _deltaOut);
        // Not smaller: stored as it is; a reader tells by the stored size equal to the block's.
        var stored = n < plain.Length ? _deltaOut.AsSpan(0, n) : plain;
        System.Buffers.BuffersExtensions.Write(_deltas, stored);
        Head.DeltaBlockSizes.Add((uint)stored.Length);
        DeltaBlocksRawBytes += plain.Length;
        DeltaBlocksStoredBytes += stored.Length;
        Stats.BytesDeltaStored += (ulong)stored.Length;
        _deltaPendingLength = 0;
    }

    /// <summary>A run left for lazy (post-copy) transfer: PE_LAZY without PE_PRESENT, no bytes here.</summary>
    public void AddLazy(ulong vaddr, ulong nrPages)
    {
        _entries.Add(NewEntry(vaddr, nrPages, PagemapFlags.Lazy));
        Stats.PagesLazy += nrPages;
    }

    /// <summary>Flushes the pages; for a writer from an ImageDirectory also writes pagemap-*.img and renames pages-N.img into place.</summary>
    public PageWriteStats Finish()
    {
        if (_finished)
            return Stats;
        CommitAll();
        FlushOut();
        FlushDeltaBlock();
        _pages.Flush();
        _finished = true;
        _onFinish?.Invoke(this);
        return Stats;
    }

    /// <summary>The head followed by the entries, ready for <see cref="ImageFile.Write"/>.</summary>
    public IEnumerable<Google.Protobuf.IMessage> PagemapMessages()
    {
        yield return Head;
        foreach (var e in _entries)
            yield return e;
    }

    private pagemap_entry NewEntry(ulong vaddr, ulong nrPages, PagemapFlags flags)
    {
        if (_finished)
            throw new InvalidOperationException("the pagemap is already finished");
        if ((vaddr & (PageGeometry.PageSize - 1)) != 0)
            throw new ArgumentException($"vaddr 0x{vaddr:x} is not page aligned", nameof(vaddr));
        if (nrPages == 0 || nrPages > uint.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(nrPages), nrPages, "a pagemap entry holds 1..2^32-1 pages");
        if (vaddr < _nextFree)
            throw new ArgumentException($"entries must ascend without overlap: 0x{vaddr:x} is below 0x{_nextFree:x}", nameof(vaddr));
        _nextFree = vaddr + (nrPages << PageGeometry.PageShift);
        // CRIU >= 4.2 reads the 64-bit count (field 5) and older readers field 2; write both.
        var entry = new pagemap_entry { Vaddr = vaddr, NrPages = (uint)nrPages, Flags = (uint)flags };
        if (Options.WriteNrPages64)
            entry.NrPages64 = nrPages;
        return entry;
    }

    private void AppendRaw(ReadOnlySpan<byte> data)
    {
        if (data.Length >= OutFlushThreshold)
        {
            FlushOut();
            _pages.Write(data);
            Wrote(data.Length);
            return;
        }
        if (_outLen + data.Length > _out.Length)
            FlushOut();
        data.CopyTo(_out.AsSpan(_outLen));
        _outLen += data.Length;
    }

    private void FlushOut()
    {
        if (_outLen > 0)
        {
            _pages.Write(_out, 0, _outLen);
            Wrote(_outLen);
            _outLen = 0;
        }
    }

    /// <summary>
    /// A pages file is fsync'd when it is finished; so that the fsync does not wait for the whole
    /// file, writeback of each WritebackBytes written is started right away (sync_file_range
    /// SYNC_FILE_RANGE_WRITE, a hint that does not wait) and the disk works while we compress.
    /// </summary>
    private void Wrote(long bytes)
    {
        _streamBytes += bytes;
        if (_streamBytes - _writebackFrom >= WritebackBytes && _pages is FileStream { CanWrite: true } fs)
        {
            Interop.Libc.StartWriteback(fs.SafeFileHandle, _writebackFrom, _streamBytes - _writebackFrom);
            _writebackFrom = _streamBytes;
        }
    }

    /// <summary>Where a job's pages are: one contiguous run, or one address per 4 KiB page.</summary>
    private readonly unsafe struct PageSource(byte* run, nint[]? addrs, int first, PageFetch? fetch = null)
    {
        private readonly byte* _run = run;
        private readonly nint[]? _addrs = addrs;
        private readonly int _first = first;

        /// <summary>Pages not in memory yet: a worker fetches each block (page i is at the job's Va + i pages).</summary>
        public PageFetch? Fetch { get; } = fetch;

        public PageSource From(int page) => new(_run == null ? null : _run + ((long)page << PageGeometry.PageShift), _addrs, _first + page, Fetch);

        public ReadOnlySpan<byte> Page(int i) => new(_run != null ? _run + ((long)i << PageGeometry.PageShift) : (byte*)_addrs![_first + i], PageGeometry.PageSize);

        /// <summary>Pages [i, i + count) as one span when they are adjacent in memory, else empty.</summary>
        public ReadOnlySpan<byte> Run(int i, int count)
        {
            if (_run != null)
                return new(_run + ((long)i << PageGeometry.PageShift), count << PageGeometry.PageShift);
            nint a = _addrs![_first + i];
            for (int k = 1; k < count; k++)
                if (_addrs[_first + i + k] != a + ((nint)k << PageGeometry.PageShift))
                    return default;
            return new((byte*)a, count << PageGeometry.PageShift);
        }
    }

    /// <summary>An entry's blocks in flight: its bitmaps fill in as its jobs commit.</summary>
    private sealed class EntryState(pagemap_entry entry, int pages, int blocks)
    {
        public readonly pagemap_entry Entry = entry;
        public readonly byte[] ZeroBits = new byte[(pages + 7) >> 3];
        public readonly byte[] RawBits = new byte[(blocks + 7) >> 3];
        public bool AnyZero, AnyRaw;
        public int BlocksLeft = blocks;
    }

    /// <summary>
    /// A run of consecutive blocks of one entry, compressed in order by one worker into one output
    /// buffer (so the blocks' bytes are already adjacent when the job commits).
    /// </summary>
    private sealed class Job : IDisposable
    {
        public EntryState State = null!;
        public PageSource Src;
        public ulong Va;
        public int FirstBlock, Blocks, Pages;
        // Sized for the largest job seen so far: small dumps do not pay for 2 MiB jobs.
        public BlockResult[] Results = [];
        public byte[] Out = [];
        public ulong[] Digests = [];
        public int OutLen;

        public void Reserve(int blocks, int slotSize, int blockPages)
        {
            if (Results.Length >= blocks)
                return;
            Results = new BlockResult[blocks];
            Out = GC.AllocateUninitializedArray<byte>(blocks * slotSize);
            Digests = new ulong[blocks * blockPages];
        }

        public bool Digest;
        public Exception? Error;
        public readonly ManualResetEventSlim Done = new(false);

        public void Dispose() => Done.Dispose();
    }

    /// <summary>Cuts an entry's pages into jobs and hands them to the workers (or keeps them for inline compression).</summary>
    private void QueueBlocks(pagemap_entry entry, ulong vaddr, PageSource src, int nr)
    {
        int blocks = (nr + _blockPages - 1) / _blockPages;
        var state = new EntryState(entry, nr, blocks);
        entry.BlockSizes.Capacity = blocks;
        entry.BlockChecksums.Capacity = blocks;
        int maxInFlight = Options.Parallelism > 1 ? JobsInFlightPerWorker * Options.Parallelism : 1;
        for (int b = 0; b < blocks; b += _jobBlocks)
        {
            while (_pending.Count >= maxInFlight || (_pending.Count > 0 && _pending.Peek().Done.IsSet))
                CommitOldest();
            var job = _spareJobs.Count > 0 ? _spareJobs.Pop() : new Job();
            int firstPage = b * _blockPages;
            job.State = state;
            job.Src = src.From(firstPage);
            job.Va = vaddr + ((ulong)firstPage << PageGeometry.PageShift);
            job.FirstBlock = b;
            job.Blocks = Math.Min(_jobBlocks, blocks - b);
            job.Reserve(job.Blocks, _slotSize, _blockPages);
            job.Pages = Math.Min(job.Blocks * _blockPages, nr - firstPage);
            job.Digest = OnPageDigest is not null;
            job.Error = null;
            job.Done.Reset();
            _pending.Enqueue(job);
            // A job of one block is compressed here: handing it to a worker (queue, wake-up,
            // completion event) costs more than compressing it. A pre-dump whose changed pages
            // are scattered writes thousands of one-page entries: 2,621 of them took 40-57 ms
            // through two workers and 18-24 ms on one thread.
            if (Options.Parallelism > 1 && job.Blocks == 1)
                Run(job, _codec!, _stage, ref _fetchBuf);
            else if (Options.Parallelism > 1)
            {
                Work().Add(job);
                JobsForWorkers++;
            }
        }
    }

    /// <summary>Jobs handed to the compression workers so far (for tests).</summary>
    internal int JobsForWorkers { get; private set; }

    /// <summary>The compression workers started so far (for tests).</summary>
    internal IReadOnlyList<Thread> WorkerThreads => _threads ?? [];

    private System.Collections.Concurrent.BlockingCollection<Job> Work()
    {
        if (_work is not null)
            return _work;
        ObjectDisposedException.ThrowIf(_disposed, this);
        _work = [];
        _threads = new Thread[Options.Parallelism];
        for (int i = 0; i < _threads.Length; i++)
        {
            var codec = new BlockCodec(Options.Compression, Options.EffectiveLevel);
            var stage = new byte[_blockPages * PageGeometry.PageSize];
            var work = _work;
            _threads[i] = new Thread(() =>
            {
                ArraySegment<byte> fetched = default;
                using (codec)
                    foreach (var job in work.GetConsumingEnumerable())
                        Run(job, codec, stage, ref fetched);
            })
            { IsBackground = true, Name = "criu-sharp compress" };
            _threads[i].Start();
        }
        return _work;
    }

    private unsafe void Run(Job job, BlockCodec codec, byte[] stage, ref ArraySegment<byte> fetched)
    {
        try
        {
            job.OutLen = 0;
            if (_abandoned)
                return; // disposed unfinished: nobody will commit it
            var fetch = job.Src.Fetch;
            // Fetched pages are read up to FetchBytes at a time into this worker's buffer and
            // compressed from there: one process_vm_readv per 1 MiB costs less CPU than one per
            // 64 KiB block (per call the kernel looks up the task and its mm and checks ptrace
            // access).
            int fetchBlocks = Math.Max(1, FetchBytes / (_blockPages << PageGeometry.PageShift));
            if (fetch is not null && fetched.Array is null)
                fetched = PageAlignedBuffer.Allocate(fetchBlocks * _blockPages << PageGeometry.PageShift);
            int fetchedFrom = 0, fetchedBlocks = 0;
            for (int k = 0; k < job.Blocks; k++)
            {
                int first = k * _blockPages;
                int count = Math.Min(_blockPages, job.Pages - first);
                ulong va = job.Va + ((ulong)first << PageGeometry.PageShift);
                var src = job.Src.From(first);
                if (fetch is not null)
                {
                    if (k >= fetchedFrom + fetchedBlocks)
                    {
                        fetchedFrom = k;
                        fetchedBlocks = Math.Min(fetchBlocks, job.Blocks - k);
                        int pages = Math.Min(fetchedBlocks * _blockPages, job.Pages - first);
                        fetch(va, fetched.AsSpan(0, pages << PageGeometry.PageShift));
                    }
                    var block = fetched.AsSpan((k - fetchedFrom) * _blockPages << PageGeometry.PageShift, count << PageGeometry.PageShift);
                    src = new PageSource((byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(block)), null, 0);
                }
                job.Results[k] = CompressBlock(codec, src, count, stage, job.Out.AsSpan(job.OutLen, _slotSize),
                    job.Digest ? job.Digests.AsSpan(first, count) : default, va);
                job.OutLen += job.Results[k].Size;
            }
        }
        catch (Exception e)
        {
            job.Error = e;
        }
        finally
        {
            job.Done.Set();
        }
    }

    private void CommitAll()
    {
        while (_pending.Count > 0)
            CommitOldest();
    }

    /// <summary>Waits for the oldest job (or runs it here without workers), then records and writes its blocks.</summary>
    private void CommitOldest()
    {
        var job = _pending.Dequeue();
        if (Options.Parallelism > 1)
            job.Done.Wait();
        else
            Run(job, _codec!, _stage, ref _fetchBuf);
        if (job.Error is not null)
        {
            _spareJobs.Push(job);
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(job.Error).Throw();
        }
        var st = job.State;
        for (int k = 0; k < job.Blocks; k++)
            Record(st, job.FirstBlock + k, in job.Results[k]);
        if (job.OutLen > 0 && job.OutLen <= SmallJobOut && _outLen + job.OutLen <= _out.Length)
        {
            // Small jobs (short entries) gather in the output buffer: one write for many of them.
            job.Out.AsSpan(0, job.OutLen).CopyTo(_out.AsSpan(_outLen));
            _outLen += job.OutLen;
        }
        else if (job.OutLen > 0)
        {
            FlushOut();
            _pages.Write(job.Out, 0, job.OutLen);
            Wrote(job.OutLen);
        }
        if (job.Digest && OnPageDigest is { } report)
            for (int i = 0; i < job.Pages; i++)
                if (job.Digests[i] != 0)
                    report(job.Va + ((ulong)i << PageGeometry.PageShift), job.Digests[i]);
        st.BlocksLeft -= job.Blocks;
        if (st.BlocksLeft == 0)
        {
            if (st.AnyZero)
                st.Entry.ZeroPages = Google.Protobuf.ByteString.CopyFrom(st.ZeroBits);
            if (st.AnyRaw)
                st.Entry.RawBlocks = Google.Protobuf.ByteString.CopyFrom(st.RawBits);
        }
        job.State = null!;
        job.Src = default;
        _spareJobs.Push(job);
    }

    private void Record(EntryState st, int block, in BlockResult r)
    {
        int first = block * _blockPages;
        ulong mask = r.ZeroMask;
        if (mask != 0)
        {
            st.AnyZero = true;
            Stats.ZeroPagesSkipped += (ulong)BitOperations.PopCount(mask);
            while (mask != 0)
            {
                int i = BitOperations.TrailingZeroCount(mask);
                int page = first + i;
                st.ZeroBits[page >> 3] |= (byte)(1 << (page & 7));
                mask &= mask - 1;
            }
        }
        if (r.Raw)
        {
            st.AnyRaw = true;
            st.RawBits[block >> 3] |= (byte)(1 << (block & 7));
            Stats.PagesStoredRaw += (ulong)r.NonZero;
        }
        st.Entry.BlockSizes.Add((uint)r.Size);
        st.Entry.BlockChecksums.Add(r.Checksum);
        Stats.BytesStored += (ulong)r.Size;
        if (r.Size > 0)
            Stats.Blocks++;
    }

    private struct BlockResult
    {
        public ulong ZeroMask;
        public int Size;
        public int NonZero;
        public bool Raw;
        public ulong Checksum;
    }

    /// <summary>
    /// Compresses one block of <paramref name="count"/> pages into <paramref name="dst"/> (at least
    /// the codec bound long). All-zero pages are dropped from the block, and a block that does not
    /// shrink is stored as it is. With <paramref name="digests"/>, each page's digest is taken
    /// while the page is in cache from the zero check.
    /// </summary>
    private static BlockResult CompressBlock(BlockCodec codec, PageSource block, int count, Span<byte> stage, Span<byte> dst, Span<ulong> digests, ulong va)
    {
        ulong zeroMask = 0;
        int nonZero = 0;
        for (int i = 0; i < count; i++)
        {
            var page = block.Page(i);
            if (page.IndexOfAnyExcept((byte)0) < 0)
            {
                zeroMask |= 1UL << i;
                if (!digests.IsEmpty)
                    digests[i] = 0;
            }
            else
            {
                nonZero++;
                if (!digests.IsEmpty)
                    digests[i] = PageDigest.OfNonZero(va + ((ulong)i << PageGeometry.PageShift), page);
            }
        }
        var result = new BlockResult { ZeroMask = zeroMask, NonZero = nonZero };
        if (nonZero == 0)
            return result;

        ReadOnlySpan<byte> src = zeroMask == 0 ? block.Run(0, count) : default;
        if (src.IsEmpty)
        {
            // Zero pages left out, or pages scattered in memory: gather the rest into the stage.
            int o = 0;
            for (int i = 0; i < count; i++)
            {
                if ((zeroMask & (1UL << i)) != 0)
                    continue;
                block.Page(i).CopyTo(stage.Slice(o));
                o += PageGeometry.PageSize;
            }
            src = stage.Slice(0, o);
        }
        int n = codec.Compress(src, dst);
        if (n >= src.Length)
        {
            src.CopyTo(dst);
            n = src.Length;
            result.Raw = true;
        }
        result.Size = n;
        result.Checksum = BlockCodec.Checksum(dst.Slice(0, n));
        return result;
    }

    public void Dispose()
    {
        _disposed = true;
        // Workers may still be reading pages for jobs never committed: stop them before the
        // caller lets that memory go.
        if (_work is { } work)
        {
            _abandoned = !_finished;
            work.CompleteAdding();
            foreach (var t in _threads!)
                t.Join();
            work.Dispose();
            _work = null;
            _threads = null;
        }
        foreach (var job in _pending)
            job.Dispose();
        _pending.Clear();
        foreach (var job in _spareJobs)
            job.Dispose();
        _spareJobs.Clear();
        if (!_finished)
            _onAbort?.Invoke(this);
        _codec?.Dispose();
        _deltaCodec?.Dispose();
        if (!_leaveOpen)
            _pages.Dispose();
    }
}

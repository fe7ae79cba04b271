using System.Numerics;
using CriuSharp.ImageFormat.Images;

namespace CriuSharp.ImageFormat;

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

    public void Add(PageWriteStats other)
    {
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
    private Worker[]? _workers;
    private const long WritebackBytes = 8 << 20;
    private long _streamBytes;
    private long _writebackFrom;
    /// <summary>Input bytes one parallel wave compresses (one fork/join per wave).</summary>
    private const int WaveBytes = 4 << 20;
    private byte[]? _waveOut;
    private BlockResult[]? _waveResults;

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
    /// Pages whose bytes go into this image. <paramref name="pages"/> is a whole number of 4 KiB
    /// pages starting at <paramref name="vaddr"/>; <paramref name="lazy"/> adds PE_LAZY (the bytes
    /// are still stored, as CRIU does for lazy-capable pages in a normal dump).
    /// </summary>
    public void AddPresent(ulong vaddr, ReadOnlySpan<byte> pages, bool lazy = false)
    {
        if (pages.Length == 0 || (pages.Length & (PageGeometry.PageSize - 1)) != 0)
            throw new ArgumentException($"page data must be a non-zero multiple of {PageGeometry.PageSize} bytes, got {pages.Length}", nameof(pages));
        ulong nr = (ulong)(pages.Length >> PageGeometry.PageShift);
        var entry = NewEntry(vaddr, nr, PagemapFlags.Present | (lazy ? PagemapFlags.Lazy : 0));
        Stats.PagesWritten += nr;
        Stats.BytesRaw += (ulong)pages.Length;

        if (_codec is null)
        {
            AppendRaw(pages);
            Stats.BytesStored += (ulong)pages.Length;
        }
        else
        {
            StoreCompressed(entry, pages);
        }
        _entries.Add(entry);
    }

    /// <summary>An unchanged run whose bytes live in the parent image set (PE_PARENT, no bytes here).</summary>
    public void AddParentHole(ulong vaddr, ulong nrPages)
    {
        _entries.Add(NewEntry(vaddr, nrPages, PagemapFlags.Parent));
        Stats.PagesSkippedParent += nrPages;
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
        FlushOut();
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

    private void StoreCompressed(pagemap_entry entry, ReadOnlySpan<byte> pages)
    {
        int nr = pages.Length >> PageGeometry.PageShift;
        int blockBytes = _blockPages * PageGeometry.PageSize;
        int blocks = (nr + _blockPages - 1) / _blockPages;
        var zeroBits = new byte[(nr + 7) >> 3];
        var rawBits = new byte[(blocks + 7) >> 3];
        bool anyZero = false, anyRaw = false;
        entry.BlockSizes.Capacity = blocks;
        entry.BlockChecksums.Capacity = blocks;

        int workers = Options.Parallelism;
        int b = 0;
        if (workers > 1 && blocks >= 2 * workers)
        {
            // Waves of up to WaveBytes of input: the workers take blocks one at a time from a
            // shared counter (blocks of random data take longer than text), the results land in
            // per-block slots and are appended in block order, so the output is the same as with one thread.
            int waveBlocks = Math.Max(2 * workers, WaveBytes / blockBytes);
            _workers ??= CreateWorkers(workers);
            if (_waveOut is null || _waveResults!.Length < waveBlocks)
            {
                _waveOut = GC.AllocateUninitializedArray<byte>(waveBlocks * _slotSize);
                _waveResults = new BlockResult[waveBlocks];
            }
            while (b < blocks)
            {
                int wave = Math.Min(blocks - b, waveBlocks);
                CompressWave(pages, b, wave, nr);
                for (int i = 0; i < wave; i++)
                {
                    ref readonly var r = ref _waveResults[i];
                    EnsureOut(r.Size);
                    _waveOut.AsSpan(i * _slotSize, r.Size).CopyTo(_out.AsSpan(_outLen));
                    _outLen += r.Size;
                    Record(entry, b + i, in r, zeroBits, rawBits, ref anyZero, ref anyRaw);
                }
                b += wave;
            }
        }
        else
        {
            for (; b < blocks; b++)
            {
                int first = b * _blockPages;
                int count = Math.Min(_blockPages, nr - first);
                EnsureOut(_slotSize);
                var r = CompressBlock(_codec!, pages.Slice(first << PageGeometry.PageShift, count << PageGeometry.PageShift), _stage, _out.AsSpan(_outLen, _slotSize));
                _outLen += r.Size;
                Record(entry, b, in r, zeroBits, rawBits, ref anyZero, ref anyRaw);
            }
        }
        if (anyZero)
            entry.ZeroPages = Google.Protobuf.ByteString.CopyFrom(zeroBits);
        if (anyRaw)
            entry.RawBlocks = Google.Protobuf.ByteString.CopyFrom(rawBits);
        if (_outLen >= OutFlushThreshold)
            FlushOut();
    }

    private void EnsureOut(int needed)
    {
        if (_outLen + needed > _out.Length)
            FlushOut();
    }

    private void Record(pagemap_entry entry, int block, in BlockResult r, byte[] zeroBits, byte[] rawBits, ref bool anyZero, ref bool anyRaw)
    {
        int first = block * _blockPages;
        ulong mask = r.ZeroMask;
        if (mask != 0)
        {
            anyZero = true;
            Stats.ZeroPagesSkipped += (ulong)BitOperations.PopCount(mask);
            while (mask != 0)
            {
                int i = BitOperations.TrailingZeroCount(mask);
                int page = first + i;
                zeroBits[page >> 3] |= (byte)(1 << (page & 7));
                mask &= mask - 1;
            }
        }
        if (r.Raw)
        {
            anyRaw = true;
            rawBits[block >> 3] |= (byte)(1 << (block & 7));
            Stats.PagesStoredRaw += (ulong)r.NonZero;
        }
        entry.BlockSizes.Add((uint)r.Size);
        entry.BlockChecksums.Add(r.Checksum);
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
    /// Compresses one block into <paramref name="dst"/> (at least the codec bound long). All-zero
    /// pages are dropped from the block, and a block that does not shrink is stored as it is.
    /// </summary>
    private static BlockResult CompressBlock(BlockCodec codec, ReadOnlySpan<byte> block, Span<byte> stage, Span<byte> dst)
    {
        int count = block.Length >> PageGeometry.PageShift;
        ulong zeroMask = 0;
        int nonZero = 0;
        for (int i = 0; i < count; i++)
        {
            if (block.Slice(i << PageGeometry.PageShift, PageGeometry.PageSize).IndexOfAnyExcept((byte)0) < 0)
                zeroMask |= 1UL << i;
            else
                nonZero++;
        }
        var result = new BlockResult { ZeroMask = zeroMask, NonZero = nonZero };
        if (nonZero == 0)
            return result;

        ReadOnlySpan<byte> src = block;
        if (zeroMask != 0)
        {
            int o = 0;
            for (int i = 0; i < count; i++)
            {
                if ((zeroMask & (1UL << i)) != 0)
                    continue;
                block.Slice(i << PageGeometry.PageShift, PageGeometry.PageSize).CopyTo(stage.Slice(o));
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

    private sealed class Worker(PagemapWriter owner) : IDisposable
    {
        public readonly BlockCodec Codec = new(owner.Options.Compression, owner.Options.EffectiveLevel);
        public readonly byte[] Stage = new byte[owner._blockPages * PageGeometry.PageSize];
        public void Dispose() => Codec.Dispose();
    }

    private Worker[] CreateWorkers(int count)
    {
        var ws = new Worker[count];
        for (int i = 0; i < count; i++)
            ws[i] = new Worker(this);
        return ws;
    }

    private unsafe void CompressWave(ReadOnlySpan<byte> pages, int firstBlock, int wave, int nr)
    {
        var workers = _workers!;
        var results = _waveResults!;
        var outBuf = _waveOut!;
        int blockPages = _blockPages;
        int slotSize = _slotSize;
        int next = -1;
        fixed (byte* basePtr = pages)
        {
            byte* p = basePtr;
            int length = pages.Length;
            Parallel.For(0, Math.Min(workers.Length, wave), new ParallelOptions { MaxDegreeOfParallelism = workers.Length }, wi =>
            {
                var w = workers[wi];
                var all = new ReadOnlySpan<byte>(p, length);
                int i;
                while ((i = Interlocked.Increment(ref next)) < wave)
                {
                    int first = (firstBlock + i) * blockPages;
                    int count = Math.Min(blockPages, nr - first);
                    results[i] = CompressBlock(w.Codec, all.Slice(first << PageGeometry.PageShift, count << PageGeometry.PageShift),
                        w.Stage, outBuf.AsSpan(i * slotSize, slotSize));
                }
            });
        }
    }

    public void Dispose()
    {
        if (!_finished)
            _onAbort?.Invoke(this);
        _codec?.Dispose();
        if (_workers is not null)
            foreach (var w in _workers)
                w.Dispose();
        if (!_leaveOpen)
            _pages.Dispose();
    }
}

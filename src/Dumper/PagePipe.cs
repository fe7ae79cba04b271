using CriuSharp.KernelApi;

namespace CriuSharp.Dumper;

/// <summary>
/// Buffers the pages a collector picked, as CRIU's page pipes do (criu/page-pipe.c): contiguous
/// pages coalesce into one iovec, holes (PE_PARENT runs) are kept as iovecs without bytes, and the
/// buffers grow by doubling up to a cap.
/// <code>
///  iovs:  {0x1000, 3 pages, buf0+0}  {0x8000, 2 pages, HOLE}  {0xa000, 1 page, buf0+12K}
///  bufs:  buf0 [p0 p1 p2 p3 ...........]   buf1 [ ... ]    (64 KiB, 128 KiB, ... 8 MiB each)
/// </code>
/// A pre-dump keeps everything and writes after the tasks are thawed; a dump runs in chunk mode:
/// the collector drains the pipe to the images whenever <see cref="BufferedBytes"/> passes the
/// chunk size, then <see cref="Reset"/> reuses the buffers.
/// <para>
/// A dump's pipe is <em>streamed</em> (constructed with a <see cref="PageXferQueue"/>) and holds
/// page <em>references</em>, as vmsplice(2) fills CRIU's pipes: a buffer is one host address per
/// 4 KiB page of the frozen task's memory (<see cref="ReserveRefs"/>), not a copy. The buffer
/// layout, and so every iovec, is exactly what the kept pipe would hold, but each time the
/// collector moves on to the next buffer the iovecs so far (all final: none can grow into a new
/// buffer) go to the transfer thread, which hands them to the compressors while the collector
/// walks on; the buffer goes back to the queue's pool once handed over.
/// </para>
/// </summary>
internal sealed class PagePipe
{
    private const int FirstBuf = 64 * 1024;
    private const int MaxBuf = 8 * 1024 * 1024;

    internal struct Iov
    {
        public ulong Va;
        public int Bytes;
        public int Buf;
        public int Off;
        public bool Hole;
        /// <summary>For holes: the number of 4 KiB image pages.</summary>
        public ulong HolePages;
        /// <summary>Streamed pipe: the pages are still in the frozen task; the page store reads them (<see cref="ReserveFetched"/>).</summary>
        public bool Fetched;
    }

    /// <summary>Logical buffers (CRIU's page_pipe_bufs): their sizes decide where iovecs split.</summary>
    private readonly List<int> _sizes = [];
    /// <summary>The bytes behind each logical buffer (kept pipe).</summary>
    private readonly List<byte[]?> _arrays = [];
    /// <summary>Streamed pipe: the page references behind each logical buffer; only the current one has any.</summary>
    private readonly List<nint[]?> _refs = [];
    private readonly List<Iov> _iovs = [];
    private readonly PageXferQueue? _stream;
    private readonly PageXfer? _target;
    private readonly FreezeLease? _frozen;
    private int _cur = -1;
    private int _off;
    /// <summary>Streaming: iovecs [0, _handed) have gone to the transfer thread.</summary>
    private int _handed;

    /// <summary>A pipe that keeps its pages until <see cref="Reset"/> (pre-dump, tests).</summary>
    public PagePipe()
    {
    }

    /// <summary>
    /// A streamed pipe: finished iovecs go to <paramref name="target"/> through
    /// <paramref name="stream"/>, as page leases valid while <paramref name="frozen"/> lasts.
    /// </summary>
    public PagePipe(PageXferQueue stream, PageXfer target, FreezeLease frozen)
    {
        _stream = stream;
        _target = target;
        _frozen = frozen;
    }

    public bool Streamed => _stream is not null;
    public IReadOnlyList<Iov> Iovs => _iovs;
    public long BufferedBytes { get; private set; }
    /// <summary>Buffers ever allocated (CRIU's page_pipe_bufs).</summary>
    public int BufferCount => _sizes.Count;

    public Span<byte> Buffer(int buf, int off, int bytes) => _arrays[buf]!.AsSpan(off, bytes);

    public void AddHole(ulong va, ulong imagePages)
    {
        if (_iovs.Count > _handed)
        {
            var last = _iovs[^1];
            if (last.Hole && last.Va + (last.HolePages << 12) == va)
            {
                last.HolePages += imagePages;
                _iovs[^1] = last;
                return;
            }
        }
        _iovs.Add(new Iov { Va = va, Hole = true, HolePages = imagePages });
    }

    /// <summary>Kept pipe: space for <paramref name="bytes"/> of pages at <paramref name="va"/>; the caller fills it.</summary>
    public Span<byte> Reserve(ulong va, int bytes)
    {
        if (_stream is not null)
            throw new InvalidOperationException("a streamed pipe holds page references");
        if (_cur < 0 || _sizes[_cur] - _off < bytes)
            NextBuffer(bytes);
        var span = _arrays[_cur]!.AsSpan(_off, bytes);
        Append(va, bytes);
        return span;
    }

    /// <summary>
    /// Streamed pipe: room for the references of <paramref name="bytes"/> of pages at
    /// <paramref name="va"/>, one host address per 4 KiB page; the caller fills it (vmsplice).
    /// </summary>
    public Span<nint> ReserveRefs(ulong va, int bytes)
    {
        if (_stream is null)
            throw new InvalidOperationException("a kept pipe holds page bytes");
        if (_cur < 0 || _sizes[_cur] - _off < bytes)
            NextBuffer(bytes);
        var span = _refs[_cur]!.AsSpan(_off >> 12, bytes >> 12);
        Append(va, bytes);
        return span;
    }

    /// <summary>
    /// Streamed pipe: <paramref name="bytes"/> of pages at <paramref name="va"/> that the page
    /// store reads from the frozen task itself when it compresses them (where a splice would copy
    /// them anyway, <see cref="KernelCapabilities.SpliceCopies"/>): no copy is held in between.
    /// The buffer space is taken as for <see cref="ReserveRefs"/>, so the iovecs split where they
    /// would for spliced pages.
    /// </summary>
    public void ReserveFetched(ulong va, int bytes)
    {
        if (_stream is null)
            throw new InvalidOperationException("a kept pipe holds page bytes");
        if (_cur < 0 || _sizes[_cur] - _off < bytes)
            NextBuffer(bytes);
        Append(va, bytes, fetched: true);
    }

    private void Append(ulong va, int bytes, bool fetched = false)
    {
        if (_iovs.Count > _handed)
        {
            var last = _iovs[^1];
            if (!last.Hole && last.Fetched == fetched && last.Buf == _cur && last.Off + last.Bytes == _off && last.Va + (ulong)last.Bytes == va
                && (long)last.Bytes + bytes <= int.MaxValue)
            {
                last.Bytes += bytes;
                _iovs[^1] = last;
                _off += bytes;
                BufferedBytes += bytes;
                return;
            }
        }
        _iovs.Add(new Iov { Va = va, Bytes = bytes, Buf = _cur, Off = _off, Fetched = fetched });
        _off += bytes;
        BufferedBytes += bytes;
    }

    /// <summary>Largest single reservation that fits a buffer (callers split longer runs).</summary>
    public static int MaxReserve => MaxBuf;

    private void NextBuffer(int need)
    {
        // Leaving the current buffer finishes every iovec so far: a streamed pipe hands them over.
        if (_stream is not null)
            HandOff();
        // Reuse a buffer left from before a Reset, else allocate one twice the size of the last.
        for (int i = _cur + 1; i < _sizes.Count; i++)
            if (_sizes[i] >= need)
            {
                if (i != _cur + 1)
                {
                    (_sizes[_cur + 1], _sizes[i]) = (_sizes[i], _sizes[_cur + 1]);
                    (_arrays[_cur + 1], _arrays[i]) = (_arrays[i], _arrays[_cur + 1]);
                    (_refs[_cur + 1], _refs[i]) = (_refs[i], _refs[_cur + 1]);
                }
                _cur++;
                _off = 0;
                if (_stream is not null)
                    _refs[_cur] = _stream.Rent(_sizes[_cur] >> 12);
                return;
            }
        int size = _sizes.Count == 0 ? FirstBuf : Math.Min(MaxBuf, _sizes[^1] * 2);
        while (size < need) size *= 2;
        _sizes.Insert(_cur + 1, size);
        _arrays.Insert(_cur + 1, _stream is not null ? null : GC.AllocateUninitializedArray<byte>(size));
        _refs.Insert(_cur + 1, _stream is not null ? _stream.Rent(size >> 12) : null);
        _cur++;
        _off = 0;
    }

    /// <summary>Streaming: posts the iovecs not yet handed over, then gives the current buffer back once they are handed on.</summary>
    private void HandOff()
    {
        for (int i = _handed; i < _iovs.Count; i++)
        {
            var iov = _iovs[i];
            if (iov.Hole)
                _stream!.PostHole(_target!, iov.Va, iov.HolePages);
            else if (iov.Fetched)
                _stream!.PostFetched(_target!, iov.Va, iov.Bytes >> 12, _frozen!);
            else
                _stream!.PostPresent(_target!, iov.Va, new PageLease(_frozen!, _refs[iov.Buf]!, iov.Off >> 12, iov.Bytes >> 12));
        }
        _handed = _iovs.Count;
        if (_cur >= 0 && _refs[_cur] is { } current)
        {
            _stream!.PostRelease(current);
            _refs[_cur] = null;
        }
    }

    /// <summary>
    /// Streaming: hands everything collected so far to the transfer thread (the end of a chunk,
    /// where a kept pipe would be written out), then resets.
    /// </summary>
    public void Drain()
    {
        if (_stream is null)
            throw new InvalidOperationException("only a streamed pipe drains itself");
        HandOff();
        Reset();
    }

    /// <summary>
    /// Read mode (a kept pipe whose pages were reserved, not copied, while the tree was frozen):
    /// copies each iovec's pages with <paramref name="read"/> (process_vm_readv) now that the tree
    /// runs. A range that can no longer be read (unmapped, or made unreadable, since the freeze)
    /// is read page by page, and the pages that fail leave the pagemap, as CRIU's
    /// page_xfer_predump_pages keeps only what process_vm_readv returned: they are dirty for the
    /// next dump anyway. Returns the bytes copied.
    /// </summary>
    public long FillDeferred(Func<ulong, Span<byte>, SysResult> read)
    {
        if (_stream is not null)
            throw new InvalidOperationException("a streamed pipe holds page references");
        long copied = 0;
        var kept = new List<Iov>(_iovs.Count);
        foreach (var iov in _iovs)
        {
            if (iov.Hole || read(iov.Va, Buffer(iov.Buf, iov.Off, iov.Bytes)).Ok)
            {
                kept.Add(iov);
                copied += iov.Hole ? 0 : iov.Bytes;
                continue;
            }
            const int Page = 4096;
            for (int off = 0; off < iov.Bytes; off += Page)
            {
                var r = read(iov.Va + (ulong)off, Buffer(iov.Buf, iov.Off + off, Page));
                if (r.Error == Errno.ESRCH)
                    throw new KernelException(Errno.ESRCH, "process_vm_readv: the task exited");
                if (!r.Ok)
                    continue;
                copied += Page;
                if (kept.Count > 0 && kept[^1] is { Hole: false } last && last.Buf == iov.Buf && last.Off + last.Bytes == iov.Off + off
                    && last.Va + (ulong)last.Bytes == iov.Va + (ulong)off)
                {
                    last.Bytes += Page;
                    kept[^1] = last;
                }
                else
                    kept.Add(new Iov { Va = iov.Va + (ulong)off, Bytes = Page, Buf = iov.Buf, Off = iov.Off + off });
            }
        }
        _iovs.Clear();
        _iovs.AddRange(kept);
        return copied;
    }

    /// <summary>Forgets the iovecs and keeps the buffers for the next chunk.</summary>
    public void Reset()
    {
        _iovs.Clear();
        _handed = 0;
        _cur = -1;
        _off = 0;
        BufferedBytes = 0;
    }
}

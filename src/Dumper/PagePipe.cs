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
    }

    private readonly List<byte[]> _bufs = [];
    private readonly List<Iov> _iovs = [];
    private int _cur = -1;
    private int _off;

    public IReadOnlyList<Iov> Iovs => _iovs;
    public long BufferedBytes { get; private set; }
    /// <summary>Buffers ever allocated (CRIU's page_pipe_bufs).</summary>
    public int BufferCount => _bufs.Count;

    public Span<byte> Buffer(int buf, int off, int bytes) => _bufs[buf].AsSpan(off, bytes);

    public void AddHole(ulong va, ulong imagePages)
    {
        if (_iovs.Count > 0)
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

    /// <summary>Space for <paramref name="bytes"/> of pages at <paramref name="va"/>; the caller fills it.</summary>
    public Span<byte> Reserve(ulong va, int bytes)
    {
        if (_cur < 0 || _bufs[_cur].Length - _off < bytes)
            NextBuffer(bytes);
        var buf = _bufs[_cur];
        var span = buf.AsSpan(_off, bytes);
        if (_iovs.Count > 0)
        {
            var last = _iovs[^1];
            if (!last.Hole && last.Buf == _cur && last.Off + last.Bytes == _off && last.Va + (ulong)last.Bytes == va
                && (long)last.Bytes + bytes <= int.MaxValue)
            {
                last.Bytes += bytes;
                _iovs[^1] = last;
                _off += bytes;
                BufferedBytes += bytes;
                return span;
            }
        }
        _iovs.Add(new Iov { Va = va, Bytes = bytes, Buf = _cur, Off = _off });
        _off += bytes;
        BufferedBytes += bytes;
        return span;
    }

    /// <summary>Largest single reservation that fits a buffer (callers split longer runs).</summary>
    public static int MaxReserve => MaxBuf;

    private void NextBuffer(int need)
    {
        // Reuse a buffer left from before a Reset, else allocate one twice the size of the last.
        for (int i = _cur + 1; i < _bufs.Count; i++)
            if (_bufs[i].Length >= need)
            {
                if (i != _cur + 1)
                    (_bufs[_cur + 1], _bufs[i]) = (_bufs[i], _bufs[_cur + 1]);
                _cur++;
                _off = 0;
                return;
            }
        int size = _bufs.Count == 0 ? FirstBuf : Math.Min(MaxBuf, _bufs[^1].Length * 2);
        while (size < need) size *= 2;
        _bufs.Insert(_cur + 1, GC.AllocateUninitializedArray<byte>(size));
        _cur++;
        _off = 0;
    }

    /// <summary>Forgets the iovecs and keeps the buffers for the next chunk.</summary>
    public void Reset()
    {
        _iovs.Clear();
        _cur = -1;
        _off = 0;
        BufferedBytes = 0;
    }
}

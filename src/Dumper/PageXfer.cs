using CriuSharp.ImageFormat;
using CriuSharp.ImageFormat.Images;
using CriuSharp.KernelApi;

namespace CriuSharp.Dumper;

/// <summary>
/// Moves what a <see cref="PagePipe"/> holds into a pagemap + pages pair (criu/page-xfer.c):
/// <code>
///  pipe iov {va, bytes}  ──AddPresent──▶  pagemap entry PE_PRESENT + (compressed) blocks in pages-N.img
///  pipe iov {va, HOLE}   ──AddParentHole▶ pagemap entry PE_PARENT (no bytes)
/// </code>
/// It remembers the PE_PRESENT ranges it wrote, so <see cref="Dedup"/> can punch what they
/// supersede out of the parent chain afterwards (--auto-dedup).
/// </summary>
internal sealed class PageXfer : IDisposable
{
    private readonly IPageSink _writer;
    private readonly List<(ulong Va, ulong End)> _written = [];
    private readonly List<(ulong Va, ulong Digest)>? _digests;

    /// <param name="digests">Keep the <see cref="PageDigest"/> of every non-zero page written (for VMA checksums).</param>
    public PageXfer(PagemapWriter writer, bool digests = false)
        : this(new LocalPageSink(writer), digests)
    {
    }

    /// <param name="sink">Local images or a page server (see <see cref="IPageSink"/>).</param>
    /// <param name="digests">As above.</param>
    public PageXfer(IPageSink sink, bool digests = false)
    {
        var writer = sink;
        _writer = writer;
        if (digests)
        {
            _digests = [];
            writer.OnPageDigest = (va, d) => _digests.Add((va, d));
        }
    }

    /// <summary>Digests of the pages written, in address order (empty unless asked for).</summary>
    public IReadOnlyList<(ulong Va, ulong Digest)> Digests => _digests ?? [];

    /// <param name="sieve">Elision and delta encoding of written pages (pre-dumps), or null.</param>
    public void Write(PagePipe pipe, PageSieve? sieve = null)
    {
        foreach (var iov in pipe.Iovs)
        {
            if (iov.Hole)
            {
                WriteHole(iov.Va, iov.HolePages);
                sieve?.Hole(iov.Va, iov.HolePages);
            }
            else if (sieve is not null)
                // Local images or a page server (holes as ADD_F PE_PARENT; deltas only where it announced them).
                sieve.Write(_writer, iov.Va, pipe.Buffer(iov.Buf, iov.Off, iov.Bytes), WritePresent);
            else
                WritePresent(iov.Va, pipe.Buffer(iov.Buf, iov.Off, iov.Bytes));
        }
    }

    /// <summary>One iovec from a streamed pipe (on the transfer thread).</summary>
    internal void WritePresent(ulong va, ReadOnlySpan<byte> bytes)
    {
        _writer.AddPresent(va, bytes);
        NoteWritten(va, va + (ulong)bytes.Length);
    }

    /// <summary>One iovec of page references from a streamed pipe (on the transfer thread).</summary>
    internal void WritePresent(ulong va, PageLease lease)
    {
        // The lease refuses its pages once the tree has been thawed.
        var pages = lease.Pages;
        _writer.AddPresentByReference(va, pages);
        NoteWritten(va, va + ((ulong)pages.Length << 12));
    }

    /// <summary>
    /// Reads the pages of a frozen task (process_vm_readv) where they are compressed, for pipes
    /// whose pages are fetched rather than spliced (<see cref="PagePipe.ReserveFetched"/>).
    /// </summary>
    public PageFetch? Fetch { get; init; }

    /// <summary>One iovec of pages still in the frozen task (on the transfer thread).</summary>
    internal void WritePresentFetched(ulong va, int pages, FreezeLease frozen)
    {
        var fetch = Fetch ?? throw new InvalidOperationException("this transfer reads no task memory");
        // The workers read later: refuse once the tree runs again, as a spliced page lease does.
        _writer.AddPresentByFetch(va, pages, (a, dst) =>
        {
            if (!frozen.Active)
                throw new InvalidOperationException("task pages fetched after the tree was thawed");
            fetch(a, dst);
        });
        NoteWritten(va, va + ((ulong)pages << 12));
    }

    private void NoteWritten(ulong va, ulong end)
    {
        if (_written.Count > 0 && _written[^1].End == va)
            _written[^1] = (_written[^1].Va, end);
        else
            _written.Add((va, end));
    }

    internal void WriteHole(ulong va, ulong imagePages) => _writer.AddParentHole(va, imagePages);

    public PageWriteStats Finish() => _writer.Finish();

    /// <summary>Where the pages went (local images or a page server).</summary>
    public IPageSink Sink => _writer;

    public IReadOnlyList<(ulong Va, ulong End)> WrittenRanges => _written;

    public void Dispose() => _writer.Dispose();

    /// <summary>
    /// --auto-dedup (criu/pagemap.c dedup_one_iovec): punches what the new image stores out of the
    /// parent chain; ImageFormat knows where the bytes sit. Returns the bytes punched.
    /// </summary>
    public static long Dedup(ImageSet? parent, string pagemapName, IReadOnlyList<(ulong Va, ulong End)> ranges)
    {
        try
        {
            return PageDedup.PunchSuperseded(parent, pagemapName, ranges);
        }
        catch (HolePunchException e)
        {
            throw new DumperException(e.Message, inner: e);
        }
    }
}

/// <summary>
/// The dump's transfer thread (CRIU splices page pipes to the images while the parasite keeps
/// draining): streamed <see cref="PagePipe"/>s post finished iovecs of page references here, in
/// order, and one thread hands them through each task's <see cref="PageXfer"/> to the page
/// store's compression workers while the collector goes on walking on the calling thread. The
/// kernel is only ever called by the collector; the workers read the frozen task's frames.
/// <code>
///  collector ── PostPresent/PostHole/PostRelease ──▶ queue ──▶ transfer thread ──▶ PagemapWriter
///      ▲                                                              │
///      └──────────── Rent: buffers come back once handed on ◀──────────┘ (at most BudgetBytes referenced)
/// </code>
/// Items are written in the order posted, so the images are the same as a synchronous write's.
/// </summary>
internal sealed class PageXferQueue : IDisposable
{
    private enum Kind : byte { Present, Hole, Release, Fetched }

    private struct Item
    {
        public Kind Kind;
        public PageXfer? Target;
        public ulong Va;
        public nint[]? Array;
        public PageLease Lease;
        public ulong HolePages;
        public FreezeLease? Frozen;
    }

    private readonly object _lock = new();
    private readonly Queue<Item> _queue = new();
    private readonly Dictionary<int, Stack<nint[]>> _free = [];
    private readonly long _budget;
    private long _inFlight;
    private bool _busy;
    private bool _closed;
    private Exception? _error;
    private Thread? _thread;

    /// <param name="budgetBytes">Page bytes that may be referenced by rented buffers at once (collected but not yet handed on).</param>
    public PageXferQueue(long budgetBytes) => _budget = budgetBytes >> 12;

    public void PostPresent(PageXfer target, ulong va, PageLease pages) =>
        Post(new Item { Kind = Kind.Present, Target = target, Va = va, Lease = pages });

    /// <summary>Pages the page store reads from the frozen task itself (<paramref name="pages"/> 4 KiB pages at <paramref name="va"/>).</summary>
    public void PostFetched(PageXfer target, ulong va, int pages, FreezeLease frozen) =>
        Post(new Item { Kind = Kind.Fetched, Target = target, Va = va, HolePages = (ulong)pages, Frozen = frozen });

    public void PostHole(PageXfer target, ulong va, ulong imagePages) =>
        Post(new Item { Kind = Kind.Hole, Target = target, Va = va, HolePages = imagePages });

    /// <summary>The buffer may be reused once everything posted before it is written.</summary>
    public void PostRelease(nint[] array) => Post(new Item { Kind = Kind.Release, Array = array });

    private void Post(Item item)
    {
        lock (_lock)
        {
            ThrowIfFailed();
            _queue.Enqueue(item);
            Monitor.PulseAll(_lock);
        }
        if (_thread is null)
        {
            _thread = new Thread(Run) { IsBackground = true, Name = "criu-sharp page xfer" };
            _thread.Start();
        }
    }

    /// <summary>A buffer of exactly <paramref name="size"/> page references; waits while the budget is used up by buffers not yet handed on.</summary>
    public nint[] Rent(int size)
    {
        lock (_lock)
        {
            while (true)
            {
                ThrowIfFailed();
                if (_free.TryGetValue(size, out var st) && st.Count > 0)
                {
                    _inFlight += size;
                    return st.Pop();
                }
                if (_inFlight == 0 || _inFlight + size <= _budget)
                {
                    _inFlight += size;
                    break;
                }
                Monitor.Wait(_lock);
            }
        }
        return GC.AllocateUninitializedArray<nint>(size);
    }

    /// <summary>Waits until everything posted is written; rethrows what the transfer thread failed with.</summary>
    public void Flush()
    {
        lock (_lock)
        {
            while (_error is null && (_queue.Count > 0 || _busy))
                Monitor.Wait(_lock);
            ThrowIfFailed();
        }
    }

    private void ThrowIfFailed()
    {
        if (_error is not null)
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(_error).Throw();
    }

    private void Run()
    {
        while (true)
        {
            Item item;
            lock (_lock)
            {
                _busy = false;
                Monitor.PulseAll(_lock);
                while (_queue.Count == 0 && !_closed)
                    Monitor.Wait(_lock);
                if (_queue.Count == 0)
                    return;
                item = _queue.Dequeue();
                _busy = true;
            }
            try
            {
                switch (item.Kind)
                {
                    case Kind.Present:
                        item.Target!.WritePresent(item.Va, item.Lease);
                        break;
                    case Kind.Hole:
                        item.Target!.WriteHole(item.Va, item.HolePages);
                        break;
                    case Kind.Fetched:
                        item.Target!.WritePresentFetched(item.Va, (int)item.HolePages, item.Frozen!);
                        break;
                    case Kind.Release:
                        lock (_lock)
                        {
                            int size = item.Array!.Length;
                            if (!_free.TryGetValue(size, out var st))
                                _free[size] = st = new Stack<nint[]>();
                            st.Push(item.Array);
                            _inFlight -= size;
                        }
                        break;
                }
            }
            catch (Exception e)
            {
                lock (_lock)
                {
                    _error = e;
                    _busy = false;
                    _queue.Clear();
                    Monitor.PulseAll(_lock);
                }
                return;
            }
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _closed = true;
            // An abandoned dump (an exception on the collector) drops what was not written yet.
            _queue.Clear();
            Monitor.PulseAll(_lock);
        }
        _thread?.Join();
    }
}

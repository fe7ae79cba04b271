using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>Where a lazy-pages daemon fetches pages: the source's page server (PS_IOV_GET).</summary>
public interface ILazyPageSource
{
    /// <summary>Fetches [va, va + dest.Length) of <paramref name="pid"/>; false when the source cannot answer (gone, or the pages are not there).</summary>
    bool TryGet(int pid, ulong va, Span<byte> dest);
}

/// <summary>An in-process source: the dump's own store.</summary>
public sealed class StoreLazyPageSource(LazyPageStore store) : ILazyPageSource
{
    public bool TryGet(int pid, ulong va, Span<byte> dest) => store.TryGet(pid, va, dest);
}

/// <summary>
/// The time model of fetching lazy pages over the link (one connection, as criu/uffd.c keeps one
/// to the page server): a fault's request takes half a round trip to the source; its page goes on
/// the wire as soon as what is already on it has gone — a drain chunk in flight is never
/// interrupted, but a fault's page goes before drain chunks not yet started (uffd.c serves faults
/// before handle_remaining_pages asks for more) — and arrives half a round trip after its transfer.
/// Modelled, not measured; the figures are options of migrate.
/// </summary>
public sealed record LazyLinkModel(ulong RoundTripNs, double BytesPerSecond, int DrainChunkBytes = 64 << 10)
{
    public ulong TransferNs(ulong bytes) => BytesPerSecond <= 0 ? 0 : (ulong)(bytes / BytesPerSecond * 1e9);
}

/// <summary>What a lazy restore's daemon did (QEMU reports the like as postcopy blocktime).</summary>
public sealed record LazyPagesStats
{
    /// <summary>UFFD_EVENT_PAGEFAULT messages served.</summary>
    public long Faults { get; init; }
    /// <summary>Pages (4 KiB) fetched from the source because a thread faulted on them.</summary>
    public long PagesByFault { get; init; }
    /// <summary>Pages fetched by the background drain, in address order.</summary>
    public long PagesByDrain { get; init; }
    /// <summary>Faults on pages the dump never had (answered with UFFDIO_ZEROPAGE).</summary>
    public long ZeroPages { get; init; }
    public ulong FaultLatencyMeanNs { get; init; }
    public ulong FaultLatencyP50Ns { get; init; }
    public ulong FaultLatencyP99Ns { get; init; }
    public ulong FaultLatencyMaxNs { get; init; }
    /// <summary>Sum of the modelled waits of faulting threads.</summary>
    public ulong StallNs { get; init; }
    /// <summary>Lazy pages that never arrived (the source was lost); non-zero means the tree was stopped.</summary>
    public long PagesLost { get; init; }
    /// <summary>
    /// Lazy pages the task unmapped or discarded (MADV_DONTNEED) before they arrived, as UNMAP and
    /// REMOVE events told: never fetched. With the events, every lazy page is fetched by a fault,
    /// by the drain, or dropped here.
    /// </summary>
    public long PagesDropped { get; init; }
    /// <summary>Lazy pages still to fetch that the task moved with mremap (fetched by their dump address, placed at the new one).</summary>
    public long PagesRemapped { get; init; }
    /// <summary>Non-cooperative userfaultfd events read (UFFD_EVENT_REMAP, _REMOVE, _UNMAP).</summary>
    public long Events { get; init; }
    /// <summary>Lazy VMAs not compared at the end because the task discarded some of their lazy pages (<see cref="LazyPagesDaemon.VmasChangedByTask"/>).</summary>
    public int VmasChangedByTask { get; init; }
}

/// <summary>
/// CRIU's lazy-pages daemon (criu/uffd.c) for one restored tree: it serves the userfaultfd faults
/// of the restored processes by fetching the page from the source (PS_IOV_GET) and placing it with
/// UFFDIO_COPY, answers faults on pages the dump never had with UFFDIO_ZEROPAGE, and drains the
/// remaining lazy pages in address order in the background (handle_remaining_pages). When every
/// page is in, it closes the userfaultfds (the VMAs become ordinary memory).
/// <code>
///  thread faults ─▶ uffd msg ─▶ OnFault: GET page ─▶ UFFDIO_COPY (wakes) ─┐
///  Drain(budget) ─▶ lowest remaining run ─▶ GET chunk ─▶ UFFDIO_COPY ─────┴─▶ remaining[] shrinks ─▶ empty: close
/// </code>
/// When the source cannot answer, the daemon stops the restored tree (SIGKILL: it must never run
/// on with pages missing) and reports the pages lost.
/// <para>
/// The restored task keeps running while pages arrive, and may munmap, mremap or MADV_DONTNEED
/// lazy memory meanwhile. The restorer asks for the non-cooperative events (<see cref="WantedFeatures"/>)
/// and the daemon follows them as criu/uffd.c does: UNMAP and REMOVE drop the pages of the range
/// from what is still to fetch (after REMOVE it also unregisters the range, so the task's next touch
/// is an ordinary fault that maps a zero page, as MADV_DONTNEED promises); REMAP re-keys the
/// pages of the moved range to their new address, keeping the dump address to fetch them by
/// (lazy_iov's start and img_start). Pages are checked by their dump address, so a moved page still
/// counts to the VMA checksum it was dumped in; a VMA of which the task discarded lazy pages cannot
/// be completed (their digests were never known here) and is counted as changed by the task, not
/// as a mismatch.
/// </para>
/// </summary>
public sealed class LazyPagesDaemon : IDisposable
{
    private readonly IKernel _k;
    private readonly ILazyPageSource _source;
    private readonly LazyLinkModel _link;
    private readonly int _ps;
    private readonly List<Lazy> _tasks = [];
    private readonly List<ulong> _latencies = [];
    private long _faults, _byFault, _byDrain, _zero, _dropped, _remapped, _events;
    private ulong _stall;
    private ulong _faultBytesThisPeriod;
    private readonly Dictionary<int, ulong> _stallByPid = [];
    /// <summary>Virtual time at which everything already on the connection has been sent.</summary>
    private ulong _wireFreeNs;
    /// <summary>Transfer times of the drain chunks requested but not yet on the wire, in order.</summary>
    private readonly Queue<ulong> _chunksWaiting = new();
    /// <summary>Per process: when its last fault was answered (a thread asleep in a fault issues no other).</summary>
    private readonly Dictionary<int, ulong> _readyAt = [];
    private bool _closed;

    private sealed class Lazy(LazyTask t)
    {
        public LazyTask Task { get; } = t;
        /// <summary>Kernel pages still to fetch, by their address in the task now, ascending.</summary>
        public SortedSet<ulong> Remaining { get; } = [];
        /// <summary>Pages of <see cref="Remaining"/> that mremap moved: address now → address in the dump.</summary>
        public Dictionary<ulong, ulong> Moved { get; } = [];
        /// <summary>Per lazy VMA: the digest sum of the pages present at restore plus those placed since.</summary>
        public ulong[] Sums { get; } = t.Checks.Select(c => c.Present).ToArray();
        /// <summary>Per lazy VMA: the task unmapped or discarded some of its lazy pages before they arrived.</summary>
        public bool[] Changed { get; } = new bool[t.Checks.Count];

        /// <summary>Where the page now at <paramref name="va"/> was in the dump (what the source knows it by).</summary>
        public ulong DumpAddress(ulong va) => Moved.TryGetValue(va, out ulong img) ? img : va;

        /// <summary>Adds placed pages, known by their dump address, to their VMA's sum.</summary>
        public void Placed(ulong dumpVa, ReadOnlySpan<byte> bytes)
        {
            for (int off = 0; off < bytes.Length; off += PageGeometry.PageSize)
            {
                ulong at = dumpVa + (ulong)off;
                if (CheckOf(at) is int i)
                    Sums[i] += PageDigest.Of(at, bytes.Slice(off, PageGeometry.PageSize));
            }
        }

        public int? CheckOf(ulong dumpVa)
        {
            var checks = Task.Checks;
            for (int i = 0; i < checks.Count; i++)
                if (checks[i].Start <= dumpVa && dumpVa < checks[i].End)
                    return i;
            return null;
        }

        /// <summary>Drops the pages still to fetch in [start, end); returns how many (kernel pages).</summary>
        public int Drop(ulong start, ulong end)
        {
            if (end <= start || Remaining.Count == 0)
                return 0;
            var gone = Remaining.GetViewBetween(start, end - 1).ToList();
            foreach (ulong a in gone)
            {
                if (CheckOf(DumpAddress(a)) is int i)
                    Changed[i] = true;
                Remaining.Remove(a);
                Moved.Remove(a);
            }
            return gone.Count;
        }

        /// <summary>Re-keys the pages still to fetch in [from, from + len) to [to, to + len); returns how many.</summary>
        public int Remap(ulong from, ulong to, ulong len)
        {
            if (len == 0 || Remaining.Count == 0)
                return 0;
            var moving = Remaining.GetViewBetween(from, from + len - 1).Select(a => (a, DumpAddress(a))).ToList();
            foreach (var (a, _) in moving)
            {
                Remaining.Remove(a);
                Moved.Remove(a);
            }
            foreach (var (a, img) in moving)
            {
                ulong now = to + (a - from);
                Remaining.Add(now);
                if (now != img)
                    Moved[now] = img;
            }
            return moving.Count;
        }
    }

    /// <summary>
    /// The non-cooperative events a lazy restore asks for at UFFDIO_API (criu/uffd.c's
    /// NEED_UFFD_API_FEATURES less UFFD_FEATURE_EVENT_FORK, which the simulated kernel lacks).
    /// </summary>
    public const ulong WantedFeatures = UffdConstants.FeatureEventRemap | UffdConstants.FeatureEventUnmap | UffdConstants.FeatureEventRemove;

    public LazyPagesDaemon(IKernel destination, ILazyPageSource source, IReadOnlyList<LazyTask> tasks, LazyLinkModel link)
    {
        _k = destination;
        _source = source;
        _link = link;
        _ps = destination.Capabilities.PageSize;
        foreach (var t in tasks)
        {
            var l = new Lazy(t);
            ulong mask = ~((ulong)_ps - 1);
            foreach (var (va, pages) in t.Ranges)
                for (ulong a = va & mask; a < va + (pages << PageGeometry.PageShift); a += (ulong)_ps)
                    l.Remaining.Add(a);
            _tasks.Add(l);
            var me = l;
            t.Uffd.SetMonitor(fd => OnFault(me, fd));
        }
    }

    /// <summary>Every lazy page has arrived.</summary>
    public bool Complete => !Failed && _tasks.All(t => t.Remaining.Count == 0);

    /// <summary>The source was lost before every page arrived; the tree was stopped.</summary>
    public bool Failed { get; private set; }

    /// <summary>Why the daemon failed: one line naming the pages lost.</summary>
    public string? Error { get; private set; }

    /// <summary>Lost lazy ranges per process after a failure, as (pid, first page, pages).</summary>
    public IReadOnlyList<(int Pid, ulong Va, ulong Pages)> LostRanges { get; private set; } = [];

    public long PagesRemaining => _tasks.Sum(t => (long)t.Remaining.Count) * (_ps / PageGeometry.PageSize);

    /// <summary>Starts a new period of the link model (faults in one period queue behind each other).</summary>
    public void BeginPeriod() => _faultBytesThisPeriod = 0;

    /// <summary>The modelled time <paramref name="pid"/>'s threads waited on faults since the last call.</summary>
    public ulong TakeStall(int pid)
    {
        _stallByPid.Remove(pid, out ulong ns);
        return ns;
    }

    /// <summary>Link bytes the faults of the current period used (the drain gets the rest).</summary>
    public ulong FaultBytesThisPeriod => _faultBytesThisPeriod;

    /// <summary>The monitor's poll wake-up: serves every message queued on the descriptor.</summary>
    private void OnFault(Lazy l, IUserfaultfd fd) => Serve(l, fd);

    /// <summary>
    /// handle_uffd_event: reads one message at a time, in the kernel's order, until none is left —
    /// faults are answered, events change what is still to fetch before any later page is placed.
    /// </summary>
    private void Serve(Lazy l, IUserfaultfd fd)
    {
        var buf = new byte[UffdMsg.Size];
        var page = new byte[_ps];
        while (!Failed)
        {
            var r = fd.Read(buf);
            if (!r.Ok)
                return;
            var msg = UffdMsg.Read(buf);
            switch (msg.Event)
            {
                case UffdConstants.EventPagefault when msg.IsMissing:
                    ServeFault(l, fd, msg, page);
                    break;
                case UffdConstants.EventUnmap:
                case UffdConstants.EventRemove:
                    _events++;
                    // REMOVE leaves the VMA in place: unregister the range so the task's next
                    // touch is an ordinary fault (a zero page), not one that asks us for a page.
                    if (msg.Event == UffdConstants.EventRemove)
                        fd.Unregister(msg.RemoveStart, msg.RemoveEnd - msg.RemoveStart);
                    _dropped += (long)l.Drop(msg.RemoveStart, msg.RemoveEnd) * (_ps / PageGeometry.PageSize);
                    break;
                case UffdConstants.EventRemap:
                    _events++;
                    _remapped += (long)l.Remap(msg.RemapFrom, msg.RemapTo, msg.RemapLen) * (_ps / PageGeometry.PageSize);
                    break;
            }
        }
    }

    private void ServeFault(Lazy l, IUserfaultfd fd, UffdMsg msg, byte[] page)
    {
        ulong at = msg.Address & ~((ulong)_ps - 1);
        _faults++;
        if (l.Remaining.Contains(at))
        {
            ulong img = l.DumpAddress(at);
            if (!_source.TryGet(l.Task.Pid, img, page))
            {
                SourceLost($"the source did not answer for page 0x{img:x} of process {l.Task.Pid}");
                return;
            }
            var c = Place(fd, at, page);
            // EAGAIN: an event is queued behind this fault. The copy woke the thread, which faults
            // again once the event is read (it may move or drop this page), so nothing changes here.
            if (c == Errno.EAGAIN)
                return;
            if (c == Errno.None)
                l.Placed(img, page);
            else if (c == Errno.ENOENT)
                l.Drop(at, at + (ulong)_ps); // fetched, but the task had unmapped the range
            l.Remaining.Remove(at);
            l.Moved.Remove(at);
            _byFault += _ps / PageGeometry.PageSize;
            _faultBytesThisPeriod += (ulong)_ps;
            ulong wait = FaultWait(l.Task.Pid);
            _latencies.Add(wait);
            _stall += wait;
            _stallByPid[l.Task.Pid] = _stallByPid.GetValueOrDefault(l.Task.Pid) + wait;
        }
        else
        {
            // Not a lazy page of the dump (never written on the source): zero it, as uffd.c
            // does for addresses no pagemap entry covers. EEXIST: it arrived meanwhile.
            var z = fd.ZeroPage(at, (ulong)_ps, 0, out _);
            if (z.Ok)
                _zero++;
            else
                fd.Wake(at, (ulong)_ps);
        }
    }

    /// <summary>
    /// The wait of a fault raised now (the kernel's clock is the faulting operation's time) by
    /// <paramref name="pid"/>, on the connection as <see cref="LazyLinkModel"/> describes it; the
    /// page's transfer then occupies the wire, so drain chunks not yet started go after it.
    /// </summary>
    private ulong FaultWait(int pid)
    {
        ulong sent = Math.Max(_k.UptimeNs, _readyAt.GetValueOrDefault(pid));
        ulong half = _link.RoundTripNs / 2;
        ulong atSource = sent + half;
        // Chunks that went on the wire before the request reached the source go first.
        while (_chunksWaiting.Count > 0 && _wireFreeNs <= atSource)
            _wireFreeNs += _chunksWaiting.Dequeue();
        ulong end = Math.Max(atSource, _wireFreeNs) + _link.TransferNs((ulong)_ps);
        _wireFreeNs = end;
        ulong wait = end + (_link.RoundTripNs - half) - sent;
        _readyAt[pid] = sent + wait;
        return wait;
    }

    /// <summary>
    /// UFFDIO_COPY of one page, treating EEXIST (the page is there already) as done, as uffd.c does.
    /// None when this copy placed it; ENOENT when the range is no longer registered (the task
    /// unmapped or moved it without our hearing of it); EAGAIN cannot stay, as events pending
    /// on the descriptor are read and the copy retried.
    /// </summary>
    private static Errno Place(IUserfaultfd fd, ulong at, ReadOnlySpan<byte> bytes)
    {
        var c = fd.Copy(at, bytes, 0, out _);
        if (!c.Ok)
            fd.Wake(at, (ulong)bytes.Length);
        return c.Ok ? Errno.None : c.Error;
    }

    /// <summary>
    /// handle_remaining_pages: fetches up to <paramref name="budgetBytes"/> of the remaining lazy
    /// pages, lowest address first, in chunks of contiguous pages. Returns the bytes fetched.
    /// </summary>
    public ulong Drain(ulong budgetBytes)
    {
        ulong done = 0;
        // Chunks asked for earlier that the wire has reached by now are gone; the rest wait their
        // turn, and this turn's go after them. The drain asks only for what the link can carry in
        // the period after what it already owes (faults take their share first), so the wire
        // never falls behind the pages placed by more than a period.
        ulong now = _k.UptimeNs;
        while (_chunksWaiting.Count > 0 && _wireFreeNs <= now)
            _wireFreeNs += _chunksWaiting.Dequeue();
        if (_chunksWaiting.Count == 0)
            _wireFreeNs = Math.Max(_wireFreeNs, now);
        ulong owedNs = _wireFreeNs - now;
        foreach (ulong c in _chunksWaiting)
            owedNs += c;
        ulong periodBytes = budgetBytes + _faultBytesThisPeriod;
        ulong owedBytes = (ulong)(owedNs / 1e9 * _link.BytesPerSecond);
        budgetBytes = Math.Min(budgetBytes, Math.Max((ulong)_ps, periodBytes > owedBytes ? periodBytes - owedBytes : 0));
        var chunk = new byte[Math.Max(_link.DrainChunkBytes, _ps)];
        foreach (var l in _tasks)
        {
            while (!Failed && l.Remaining.Count > 0 && done + (ulong)_ps <= budgetBytes)
            {
                if (_k.FindTask(l.Task.Pid) is not { Alive: true })
                {
                    l.Remaining.Clear();
                    break;
                }
                ulong first = l.Remaining.Min;
                int n = 1;
                int max = (int)Math.Min((ulong)chunk.Length, budgetBytes - done) / _ps;
                ulong img = l.DumpAddress(first);
                // A run is contiguous both where the pages are now and where they were dumped.
                while (n < max && l.Remaining.Contains(first + (ulong)(n * _ps)) && l.DumpAddress(first + (ulong)(n * _ps)) == img + (ulong)(n * _ps))
                    n++;
                var span = chunk.AsSpan(0, n * _ps);
                if (!_source.TryGet(l.Task.Pid, img, span))
                {
                    SourceLost($"the source did not answer for pages 0x{img:x}-0x{img + (ulong)span.Length:x} of process {l.Task.Pid}");
                    return done;
                }
                // One copy per run; a page a fault brought in meanwhile stops the run at EEXIST,
                // so the rest is copied page by page.
                var c = l.Task.Uffd.Copy(first, span, 0, out long copied);
                if (!c.Ok && c.Error == Errno.EAGAIN && copied == -(long)Errno.EAGAIN)
                {
                    // mmap_changing: the task changed its memory and the event is unread. Read it
                    // (it may drop or move these very pages), then pick the run again. The pages
                    // were fetched for nothing; the wire carried them all the same.
                    _chunksWaiting.Enqueue(_link.TransferNs((ulong)span.Length));
                    done += (ulong)span.Length;
                    Serve(l, l.Task.Uffd);
                    continue;
                }
                int placed = c.Ok ? n : (int)Math.Max(0, copied) / _ps;
                l.Placed(img, span[..(placed * _ps)]);
                if (!c.Ok)
                    for (int i = placed; i < n; i++)
                    {
                        ulong at = first + (ulong)(i * _ps);
                        var e = Place(l.Task.Uffd, at, span.Slice(i * _ps, _ps));
                        if (e == Errno.None)
                            l.Placed(img + (ulong)(i * _ps), span.Slice(i * _ps, _ps));
                        else if (e == Errno.ENOENT)
                            l.Drop(at, at + (ulong)_ps); // fetched, but the task had unmapped the range
                    }
                for (int i = 0; i < n; i++)
                {
                    l.Remaining.Remove(first + (ulong)(i * _ps));
                    l.Moved.Remove(first + (ulong)(i * _ps));
                }
                _byDrain += n * (_ps / PageGeometry.PageSize);
                done += (ulong)span.Length;
                _chunksWaiting.Enqueue(_link.TransferNs((ulong)span.Length));
            }
        }
        if (Complete)
        {
            Close();
            CheckVmas();
        }
        return done;
    }

    /// <summary>VMAs whose checksums the lazy pages completed (after <see cref="Complete"/>).</summary>
    public int VmasVerified { get; private set; }

    /// <summary>Set when a completed VMA's checksum differs from the dump's (a page arrived wrong).</summary>
    public string? VerifyError { get; private set; }

    /// <summary>
    /// VMAs not compared after the lazy pages arrived because the task itself unmapped or discarded
    /// some of their lazy pages first: what those pages held on the source is not known here, so
    /// the dump's checksum cannot be completed (the pages that did arrive were no different).
    /// </summary>
    public int VmasChangedByTask { get; private set; }

    private void CheckVmas()
    {
        foreach (var l in _tasks)
            for (int i = 0; i < l.Task.Checks.Count; i++)
            {
                var c = l.Task.Checks[i];
                if (l.Changed[i])
                    VmasChangedByTask++;
                else if (l.Sums[i] == c.Expected)
                    VmasVerified++;
                else
                    VerifyError ??= $"restored memory differs from the dump (VMA checksum mismatch) (pid {l.Task.Pid}, range 0x{c.Start:x}-0x{c.End:x}, after the lazy pages arrived)";
            }
    }

    private void SourceLost(string why)
    {
        Failed = true;
        var lost = new List<(int, ulong, ulong)>();
        long pages = 0;
        foreach (var l in _tasks)
        {
            ulong runStart = 0, runPages = 0;
            foreach (var a in l.Remaining)
            {
                ulong imgPages = (ulong)(_ps / PageGeometry.PageSize);
                if (runPages > 0 && runStart + (runPages << PageGeometry.PageShift) == a)
                    runPages += imgPages;
                else
                {
                    if (runPages > 0) lost.Add((l.Task.Pid, runStart, runPages));
                    runStart = a;
                    runPages = imgPages;
                }
                pages += (long)imgPages;
            }
            if (runPages > 0) lost.Add((l.Task.Pid, runStart, runPages));
        }
        LostRanges = lost;
        Error = $"lazy restore failed: {why}; {pages} pages in {lost.Count} ranges never arrived, the restored tree was stopped (SIGKILL)";
        // Never let the tree run on with missing memory.
        foreach (var l in _tasks)
            if (_k.FindTask(l.Task.Pid) is { Alive: true })
                _k.Exit(l.Task.Pid, 0, 9);
        Close();
    }

    public LazyPagesStats Stats
    {
        get
        {
            var sorted = _latencies.OrderBy(x => x).ToList();
            ulong Pct(double p) => sorted.Count == 0 ? 0 : sorted[Math.Min(sorted.Count - 1, (int)Math.Ceiling(p * sorted.Count) - 1)];
            return new LazyPagesStats
            {
                Faults = _faults,
                PagesByFault = _byFault,
                PagesByDrain = _byDrain,
                ZeroPages = _zero,
                FaultLatencyMeanNs = sorted.Count == 0 ? 0 : (ulong)sorted.Average(x => (double)x),
                FaultLatencyP50Ns = Pct(0.5),
                FaultLatencyP99Ns = Pct(0.99),
                FaultLatencyMaxNs = sorted.Count == 0 ? 0 : sorted[^1],
                StallNs = _stall,
                PagesLost = LostRanges.Sum(r => (long)r.Pages),
                PagesDropped = _dropped,
                PagesRemapped = _remapped,
                Events = _events,
                VmasChangedByTask = VmasChangedByTask,
            };
        }
    }

    private void Close()
    {
        if (_closed)
            return;
        _closed = true;
        foreach (var l in _tasks)
        {
            l.Task.Uffd.SetMonitor(null);
            l.Task.Uffd.Close();
        }
    }

    public void Dispose() => Close();
}

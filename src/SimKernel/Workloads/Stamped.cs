using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Workloads;

/// <summary>
/// Stamped pages, the self-check shared by uniform, hotcold, sequential, swap, thp, idle and fork.
///
/// Every write op gives the page a new stamp s (a per-process counter) and stores one word:
///   data page p:   word at Offset(p) = DataWord(p, s); every other byte of the page stays zero
///   ledger word p: LedgerWord(p, s) = s | check(p, s) &lt;&lt; 40   (0 = never written)
/// The ledger is private memory of the process, so a dump saves it and fork copies it. A register
/// keeps the sum of all ledger words, which catches a data page and its ledger page restored
/// together from an older image (both consistent, both stale). Verify reads every page without
/// faulting: any byte that differs from what the ledger implies is a bad page.
/// </summary>
internal static class Stamped
{
    public static bool Uses(Behaviour b) => b is Behaviour.Uniform or Behaviour.HotCold or Behaviour.Sequential
        or Behaviour.Swap or Behaviour.Thp or Behaviour.Idle or Behaviour.Fork or Behaviour.Threads;

    public const ulong StampMask = (1UL << 40) - 1;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong DataWord(ulong key, ulong page, ulong stamp) =>
        stamp == 0 ? 0 : Rng.Mix(key ^ (page * 0x9E3779B97F4A7C15UL) ^ (stamp * 0xD1B54A32D192ED03UL)) | 1;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong LedgerWord(ulong key, ulong page, ulong stamp) =>
        stamp == 0 ? 0 : stamp | ((Rng.Mix(~key ^ page ^ (stamp << 24)) & 0xFFFFFF) << 40);

    /// <summary>Byte offset of the stamp word inside page <paramref name="page"/>: spread by a multiplicative hash.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Offset(ulong page, int wordBits) => ((page * 0x9E3779B97F4A7C15UL) >> (64 - wordBits)) << 3;

    // ---- running -------------------------------------------------------------------------

    /// <summary>Everything the inner loop needs, loaded from registers and written back on exit.</summary>
    internal ref struct Cpu
    {
        public SimTask Task;
        public ulong[] R;
        public Rng Rng;
        public ulong Pc, Stamp, Digest, Owed;
        public bool CountOwed;
        public ulong Key;
        public int PageShift, WordBits;
        public ulong LedgerBase;
        /// <summary>Whole-page contents (null: stamped pages, one word each).</summary>
        public PageContent? Content;

        public Cpu(SimTask task, ProgramImage prog, bool countOwed)
        {
            Content = PageContent.Of(prog, task.Kernel.Arch.PageSize);
            Task = task;
            R = task.Registers;
            Rng = Rng.Load(R);
            Pc = R[Regs.Pc];
            Stamp = R[Regs.Stamp];
            Digest = R[Regs.Digest];
            Owed = R[Regs.Owed];
            CountOwed = countOwed;
            Key = prog.Seed;
            PageShift = task.Kernel.Arch.PageShift;
            WordBits = PageShift - 3;
            LedgerBase = prog.Ledger >= 0 ? R[Regs.RegionBase + prog.Ledger] : 0;
        }

        public readonly void Flush()
        {
            Rng.Store(R);
            R[Regs.Pc] = Pc;
            R[Regs.Stamp] = Stamp;
            R[Regs.Digest] = Digest;
            R[Regs.Owed] = Owed;
        }

        /// <summary>One counted operation done.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Retire()
        {
            Pc++;
            // Written through, so a fault in the next operation can tell when that operation is due.
            if (CountOwed)
                R[Regs.Owed] = --Owed;
        }

        /// <summary>Stamps page <paramref name="page"/> (ledger index) whose base address is <paramref name="pageVa"/>.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool Write(ulong page, ulong pageVa)
        {
            ulong s = ++Stamp;
            if (Content is { } c)
            {
                if (!Task.Write(pageVa, c.Expected(Key, page, s, WordBits)).Ok)
                    return false;
            }
            else if (!Task.StoreU64(pageVa + Offset(page, WordBits), DataWord(Key, page, s)))
                return false;
            return Ledger(page, s);
        }

        /// <summary>Records stamp <paramref name="s"/> for <paramref name="page"/> in the ledger (one exchange) and the digest.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool Ledger(ulong page, ulong s)
        {
            ulong lw = LedgerWord(Key, page, s);
            ulong va = LedgerBase + (page << 3);
            if (!Task.Mm.ExchangeU64(va, lw, out ulong old, out _) && !Task.ExchangeU64(va, lw, out old))
                return false;
            Digest += lw - old;
            return true;
        }

        /// <summary>Forgets page <paramref name="page"/>: its contents became zero (DONTNEED, munmap).</summary>
        public bool Forget(ulong page)
        {
            if (!Task.ExchangeU64(LedgerBase + (page << 3), 0, out ulong old))
                return false;
            Digest -= old;
            return true;
        }

        /// <summary>Loads page <paramref name="page"/>'s stamp word and checks it against the ledger (zdtm-style, in flight).</summary>
        public bool ReadCheck(ulong page, ulong pageVa)
        {
            if (!Task.LoadU64(LedgerBase + (page << 3), out ulong lw))
                return false;
            ulong va = pageVa + Offset(page, WordBits);
            if (!Task.LoadU64(va, out ulong w))
                return false;
            if (w != DataWord(Key, page, lw & StampMask) && R[Regs.Failure] == 0)
            {
                R[Regs.Failure] = Pc + 1;
                R[Regs.FailureDetail] = va;
            }
            return true;
        }
    }

    /// <summary>Runs up to <paramref name="n"/> ops; returns how many ran.</summary>
    /// <remarks>
    /// AggressiveOptimization: the machine calls this a handful of times with long loops, so tiered
    /// compilation would leave the loop in tier-0/OSR code (measured 3× slower).
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static long Run(SimTask task, ProgramImage prog, long n, bool countOwed)
    {
        var cpu = new Cpu(task, prog, countOwed);
        var r = cpu.R;
        int ps = 1 << cpu.PageShift;
        ulong dataBase = r[Regs.RegionBase + prog.Data];
        ulong pages = prog.Regions[prog.Data].Size >> cpu.PageShift;
        int shift = cpu.PageShift;
        long done = 0;
        switch (prog.Kind)
        {
            case Behaviour.Uniform when cpu.Content is not null:
                // Whole-page contents: one write per op (the batched stores below store one word).
                for (; done < n; done++)
                {
                    ulong p = cpu.Rng.Below(pages);
                    if (!cpu.Write(p, dataBase + (p << shift)))
                        break;
                    cpu.Retire();
                }
                break;
            case Behaviour.Uniform:
            {
                // Batched as a CPU overlaps independent stores: a batch's pages are drawn first and
                // their entries and faulting frames requested from the host's caches (hints, no
                // state changes), then its data stores run through the mm's store run, then its
                // ledger exchanges.
                // The final memory is the same as op by op (a page drawn twice ends with the later
                // stamp in both places, and the digest follows each exchange's old value). A store
                // the run cannot do without a fault goes through the task's store, which faults.
                const int Batch = 32;
                Span<ulong> pagesOf = stackalloc ulong[Batch];
                Span<ulong> vas = stackalloc ulong[Batch];
                Span<ulong> values = stackalloc ulong[Batch];
                Span<ulong> olds = stackalloc ulong[Batch];
                int wordBits = cpu.WordBits;
                ulong key = cpu.Key;
                ulong ledgerBase = cpu.LedgerBase;
                var mm = task.Mm;
                bool dead = false;
                while (done < n && !dead)
                {
                    int m = (int)Math.Min(Batch, n - done);
                    ulong s0 = cpu.Stamp;
                    for (int j = 0; j < m; j++)
                    {
                        ulong p = cpu.Rng.Below(pages);
                        pagesOf[j] = p;
                        vas[j] = dataBase + (p << shift) + Offset(p, wordBits);
                        values[j] = DataWord(key, p, s0 + 1 + (ulong)j);
                    }
                    mm.PrefetchForStores(vas[..m]);
                    for (int j = 0; j < m; j++)
                    {
                        j += mm.StoreRun(vas[j..m], values[j..m]);
                        if (j < m && !task.StoreU64(vas[j], values[j]))
                        {
                            m = j; // the task died: ops from j on never happened
                            dead = true;
                        }
                    }
                    for (int j = 0; j < m; j++)
                    {
                        ulong p = pagesOf[j];
                        vas[j] = ledgerBase + (p << 3);
                        values[j] = LedgerWord(key, p, s0 + 1 + (ulong)j);
                    }
                    int did = 0;
                    while (did < m)
                    {
                        did += mm.ExchangeRun(vas[did..m], values[did..m], olds[did..m]);
                        if (did < m)
                        {
                            if (!task.ExchangeU64(vas[did], values[did], out olds[did]))
                            {
                                dead = true;
                                break;
                            }
                            did++;
                        }
                    }
                    for (int j = 0; j < did; j++)
                    {
                        cpu.Digest += values[j] - olds[j];
                        cpu.Stamp++;
                        cpu.Retire();
                    }
                    done += did;
                }
                break;
            }
            case Behaviour.HotCold:
            {
                var zipf = prog.Zipf ? Zipf(prog, pages) : null;
                ulong hot = prog.HotPages;
                for (; done < n; done++)
                {
                    ulong p;
                    if (zipf is not null)
                        p = zipf.Sample(ref cpu.Rng) - 1;
                    else if (cpu.Rng.Chance(prog.HotShare) || hot >= pages)
                        p = cpu.Rng.Below(hot);
                    else
                        p = hot + cpu.Rng.Below(pages - hot);
                    if (!cpu.Write(p, dataBase + (p << shift)))
                        break;
                    cpu.Retire();
                }
                break;
            }
            case Behaviour.Sequential:
                for (; done < n; done++)
                {
                    ulong p = r[Regs.Aux0];
                    if (!cpu.Write(p, dataBase + (p << shift)))
                        break;
                    r[Regs.Aux0] = (p + prog.Stride) % pages;
                    cpu.Retire();
                }
                break;
            case Behaviour.Swap:
                for (; done < n; done++)
                {
                    bool ok;
                    if ((cpu.Pc + 1) % prog.PageoutEvery == 0)
                    {
                        // MADV_PAGEOUT of a window: later writes and reads fault the pages back in.
                        ulong w = prog.PageoutPages;
                        ulong start = cpu.Rng.Below(pages - w + 1);
                        ok = task.Madvise(dataBase + (start << shift), w << shift, Madvise.PageOut).Ok || task.Alive;
                    }
                    else
                    {
                        bool read = cpu.Rng.Chance(prog.ReadShare);
                        ulong p = cpu.Rng.Below(pages);
                        ok = read ? cpu.ReadCheck(p, dataBase + (p << shift)) : cpu.Write(p, dataBase + (p << shift));
                    }
                    if (!ok)
                        break;
                    cpu.Retire();
                }
                break;
            case Behaviour.Thp:
                for (; done < n; done++)
                {
                    ulong p = cpu.Rng.Below(pages);
                    bool ok;
                    if (prog.SplitEvery != 0 && (cpu.Pc + 1) % prog.SplitEvery == 0)
                    {
                        // DONTNEED of one small page inside a huge page splits the PMD: the page reads zero afterwards.
                        ok = task.Madvise(dataBase + (p << shift), (ulong)ps, Madvise.DontNeed).Ok && cpu.Forget(p);
                    }
                    else
                        ok = cpu.Write(p, dataBase + (p << shift));
                    if (!ok)
                        break;
                    cpu.Retire();
                }
                break;
            case Behaviour.Idle:
                // Sleeping: time passes, nothing is touched.
                for (; done < n; done++)
                    cpu.Retire();
                break;
            case Behaviour.Fork:
                done = RunFork(ref cpu, prog, n, dataBase, pages);
                break;
            case Behaviour.Threads:
            {
                // This thread's slice only: the threads of the group write concurrently (each
                // runs its own due operations every quantum) but never the same page.
                var (lo, hi) = ThreadSlice(prog, pages, r[Regs.Role]);
                for (; done < n; done++)
                {
                    ulong p = lo + cpu.Rng.Below(hi - lo);
                    if (!cpu.Write(p, dataBase + (p << shift)))
                        break;
                    cpu.Retire();
                }
                break;
            }
        }
        cpu.Flush();
        return done;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static long RunFork(ref Cpu cpu, ProgramImage prog, long n, ulong dataBase, ulong pages)
    {
        var r = cpu.R;
        int shift = cpu.PageShift;
        ulong role = r[Regs.Role];
        ulong sharedBase = 0, slice = 0;
        if (prog.SharedData >= 0)
        {
            sharedBase = r[Regs.RegionBase + prog.SharedData];
            slice = (prog.Regions[prog.SharedData].Size >> shift) / (ulong)(prog.Children + 1);
        }
        long done = 0;
        for (; done < n; done++)
        {
            if (role == 0 && r[Regs.Aux0] < (ulong)prog.Children)
            {
                // fork(): the child gets a copy of the registers (so it continues from here with
                // the operations its parent still owes in this quantum), its own role, and its
                // own random stream.
                cpu.Retire();
                ulong idx = ++r[Regs.Aux0];
                cpu.Flush();
                var child = cpu.Task.Kernel.Fork(cpu.Task);
                child.ExtraState = cpu.Task.ExtraState;
                child.Registers[Regs.Role] = idx;
                child.Registers[Regs.Aux0] = 0;
                Rng.Seed(child.Registers, prog.Seed ^ Rng.Mix(idx * 0x2545F4914F6CDD1DUL));
                continue;
            }
            bool ok;
            if (slice != 0 && cpu.Rng.Chance(prog.SharedShare))
            {
                // MAP_SHARED anonymous memory: each process stamps only its own slice, so the
                // writes of one are visible to all and checkable by their writer.
                ulong q = role * slice + cpu.Rng.Below(slice);
                ok = cpu.Write(pages + q, sharedBase + (q << shift));
            }
            else
            {
                ulong p = cpu.Rng.Below(pages);
                ok = cpu.Write(p, dataBase + (p << shift));
            }
            if (!ok)
                break;
            cpu.Retire();
        }
        return done;
    }

    /// <summary>Pages [lo, hi) of the data that thread <paramref name="role"/> (0: the leader) stamps.</summary>
    public static (ulong Lo, ulong Hi) ThreadSlice(ProgramImage prog, ulong pages, ulong role)
    {
        ulong n = (ulong)(prog.Threads ?? 0) + 1;
        return (role * pages / n, (role + 1) * pages / n);
    }

    /// <summary>
    /// The threads of a threads program, cloned at spawn (clone with CLONE_THREAD, as
    /// pthread_create does): each runs the same program with its own role, random stream,
    /// stamp counter and digest, in the registers a dump saves per thread.
    /// </summary>
    public static List<SimTask> CloneThreads(SimTask leader, ProgramImage prog)
    {
        var list = new List<SimTask>();
        for (int i = 1; i <= (prog.Threads ?? 0); i++)
        {
            var th = leader.Kernel.CloneThread(leader);
            th.ExtraState = leader.ExtraState;
            th.Registers[Regs.Role] = (ulong)i;
            Rng.Seed(th.Registers, prog.Seed ^ Rng.Mix((ulong)i * 0x2545F4914F6CDD1DUL));
            list.Add(th);
        }
        return list;
    }

    /// <summary>Spawn-time fill: every data page stamped once, in order (not counted as operations); a thread fills its own slice.</summary>
    public static void Prefill(SimTask task, ProgramImage prog)
    {
        var cpu = new Cpu(task, prog, countOwed: false);
        ulong dataBase = cpu.R[Regs.RegionBase + prog.Data];
        ulong pages = prog.Regions[prog.Data].Size >> cpu.PageShift;
        ulong first = 0;
        if (prog.Kind == Behaviour.Threads)
            (first, pages) = ThreadSlice(prog, pages, cpu.R[Regs.Role]);
        for (ulong p = first; p < pages; p++)
            if (!cpu.Write(p, dataBase + (p << cpu.PageShift)))
                break;
        cpu.Flush();
    }

    private static readonly ConditionalWeakTable<ProgramImage, ZipfSampler> Samplers = new();

    private static ZipfSampler Zipf(ProgramImage prog, ulong pages) =>
        Samplers.GetValue(prog, p => new ZipfSampler(pages, p.Exponent));

    // ---- verifying -----------------------------------------------------------------------

    public static VerifyReport Verify(SimTask task, ProgramImage prog, string behaviour)
    {
        var r = task.Registers;
        var check = new PageChecker(task);
        int shift = task.Kernel.Arch.PageShift;
        ulong ps = 1UL << shift;
        int wordBits = shift - 3;
        ulong dataBase = r[Regs.RegionBase + prog.Data];
        ulong pages = prog.Regions[prog.Data].Size >> shift;
        ulong ledgerBase = r[Regs.RegionBase + prog.Ledger];
        ulong ledgerSize = prog.Regions[prog.Ledger].Size;
        ulong key = prog.Seed;

        // The ledger, read without faulting.
        var ledgerBytes = new byte[ledgerSize];
        for (ulong off = 0; off < ledgerSize; off += ps)
            check.ReadPage(ledgerBase + off, ledgerBytes.AsSpan((int)off, (int)ps));
        var ledger = MemoryMarshal.Cast<byte, ulong>(ledgerBytes.AsSpan());

        ulong sharedPages = 0, sharedBase = 0, sliceLo = 0, sliceHi = 0;
        if (prog.SharedData >= 0)
        {
            sharedPages = prog.Regions[prog.SharedData].Size >> shift;
            sharedBase = r[Regs.RegionBase + prog.SharedData];
            ulong slice = sharedPages / (ulong)(prog.Children + 1);
            sliceLo = r[Regs.Role] * slice;
            sliceHi = sliceLo + slice;
        }
        ulong entries = pages + sharedPages;
        ulong digest = 0;
        // threads: each thread's digest register sums the ledger words of its own slice; the
        // leader checks every page and every thread, a thread its own slice.
        bool threads = prog.Kind == Behaviour.Threads;
        ulong roles = (ulong)(prog.Threads ?? 0) + 1;
        var sliceSums = new ulong[threads ? roles : 0];
        ulong checkLo = 0, checkHi = entries;
        if (threads && task.IsThread)
            (checkLo, checkHi) = ThreadSlice(prog, pages, r[Regs.Role]);
        for (ulong i = 0; i < (ulong)ledger.Length; i++)
        {
            ulong lw = ledger[(int)i];
            digest += lw;
            if (threads && i < pages)
                sliceSums[RoleOf(prog, pages, i)] += lw;
            bool ownShared = i >= pages && i - pages >= sliceLo && i - pages < sliceHi;
            bool valid = i >= entries ? lw == 0
                : i >= pages && !ownShared ? lw == 0
                : lw == LedgerWord(key, i, lw & StampMask);
            if (!valid)
            {
                check.Bad(ledgerBase + (i << 3), $"ledger word {i} is 0x{lw:x16}, not a valid stamp");
                // The ledger is the culprit: its data page cannot be judged against it.
                if (i < entries)
                    ledger[(int)i] = ulong.MaxValue;
            }
        }

        var page = check.Buffer;
        var words = MemoryMarshal.Cast<byte, ulong>(page.AsSpan());
        var content = PageContent.Of(prog, (int)ps);
        var zeroPage = new byte[ps];
        for (ulong p = checkLo; p < checkHi; p++)
        {
            bool shared = p >= pages;
            if (shared && (p - pages < sliceLo || p - pages >= sliceHi))
                continue;
            ulong va = shared ? sharedBase + ((p - pages) << shift) : dataBase + (p << shift);
            if (ledger[(int)p] == ulong.MaxValue)
                continue;
            ulong s = ledger[(int)p] & StampMask;
            check.Count++;
            if (!check.ReadPage(va, page))
                continue;
            if (content is not null)
            {
                var want = s == 0 ? zeroPage : content.Expected(key, p, s, wordBits);
                if (!page.AsSpan().SequenceEqual(want))
                {
                    int diff = page.AsSpan().CommonPrefixLength(want);
                    check.Bad(va, $"page {p}: byte {diff} is 0x{page[diff]:x2}, expected 0x{want[diff]:x2} ({prog.Content} contents of stamp {s})");
                }
                continue;
            }
            int at = (int)(Offset(p, wordBits) >> 3);
            ulong expect = DataWord(key, p, s);
            if (words[at] != expect)
            {
                check.Bad(va, $"page {p}: stamp word 0x{words[at]:x16}, expected 0x{expect:x16} for stamp {s}");
                continue;
            }
            words[at] = 0;
            if (page.AsSpan().IndexOfAnyExcept((byte)0) is var nz && nz >= 0)
                check.Bad(va, $"page {p}: byte {nz} is 0x{page[nz]:x2}, expected 0");
        }
        if (threads)
            CheckThreadDigests(task, prog, pages, sliceSums, check, ledgerBase);
        else if (digest != r[Regs.Digest] && check.FirstBad is null)
            check.Bad(ledgerBase, $"ledger sum 0x{digest:x16} differs from the register's 0x{r[Regs.Digest]:x16}: the ledger and its data are from another point in time");
        return check.Report(task, behaviour);
    }

    /// <summary>The slice (thread role) page <paramref name="page"/> belongs to.</summary>
    private static ulong RoleOf(ProgramImage prog, ulong pages, ulong page)
    {
        ulong roles = (ulong)(prog.Threads ?? 0) + 1;
        ulong role = page * roles / pages;
        // Slices are [role·pages/roles, (role+1)·pages/roles): the estimate can be one too high.
        while (role > 0 && ThreadSlice(prog, pages, role).Lo > page)
            role--;
        while (ThreadSlice(prog, pages, role).Hi <= page)
            role++;
        return role;
    }

    /// <summary>
    /// Each thread's digest register against its slice's ledger sum: a thread restored with an
    /// older register file, or not restored at all, fails here even when every page is consistent.
    /// </summary>
    private static void CheckThreadDigests(SimTask task, ProgramImage prog, ulong pages, ulong[] sliceSums, PageChecker check, ulong ledgerBase)
    {
        if (check.FirstBad is not null)
            return;
        var byRole = new Dictionary<ulong, SimTask>();
        foreach (var t in task.IsThread ? [task] : task.Kernel.Threads(task.Tgid))
            if (WorkloadApi.HasProgram(t))
                byRole.TryAdd(t.Registers[Regs.Role], t);
        ulong first = task.IsThread ? task.Registers[Regs.Role] : 0, last = task.IsThread ? first : (ulong)sliceSums.Length - 1;
        for (ulong role = first; role <= last; role++)
        {
            ulong lo = ThreadSlice(prog, pages, role).Lo;
            if (!byRole.TryGetValue(role, out var t))
            {
                check.Bad(ledgerBase + (lo << 3), $"thread {role} of the program is missing (the process has {byRole.Count} of its {sliceSums.Length} threads)");
                return;
            }
            if (t.Registers[Regs.Digest] != sliceSums[role])
            {
                check.Bad(ledgerBase + (lo << 3), $"thread {t.Pid} (thread {role}): ledger sum of its slice 0x{sliceSums[role]:x16} differs from its register's 0x{t.Registers[Regs.Digest]:x16}: its registers and its pages are from different points in time");
                return;
            }
        }
    }
}

/// <summary>
/// Reads pages for a self-check without faulting or changing any page-table state (a verify must
/// not disturb the soft-dirty state it may be asked about later), and collects the first bad address.
/// </summary>
internal sealed class PageChecker(SimTask task)
{
    private readonly MmStruct _mm = task.Mm;
    private readonly int _ps = task.Kernel.Arch.PageSize;
    public readonly byte[] Buffer = new byte[task.Kernel.Arch.PageSize];
    public ulong? FirstBad { get; private set; }
    public string? Detail { get; private set; }
    public long Count;

    /// <summary>
    /// The page's contents as the process would read them: its frame or swap slot, else the file's
    /// page cache for file and shared mappings, else zeros. False when the address is unmapped
    /// (recorded as bad).
    /// </summary>
    public bool ReadPage(ulong va, Span<byte> dst)
    {
        var vma = _mm.Find(va);
        if (vma is null)
        {
            dst.Clear();
            Bad(va, $"0x{va:x} is not mapped");
            return false;
        }
        if (_mm.PeekPage(va, dst))
            return true;
        if (vma.File is { } f)
        {
            long idx = vma.PgOff + (long)((va - vma.Start) >> task.Kernel.Arch.PageShift);
            task.Kernel.Fs.Read(f, idx * _ps, dst);
        }
        else
            dst.Clear();
        return true;
    }

    public void Bad(ulong va, string detail)
    {
        ulong page = va & ~((ulong)_ps - 1);
        if (FirstBad is null || page < FirstBad)
        {
            FirstBad = page;
            Detail = detail;
        }
    }

    public VerifyReport Report(SimTask task, string behaviour) =>
        new(task.Pid, behaviour, FirstBad is null && task.Registers[Regs.Failure] == 0, Count, FirstBad,
            FirstBad is null ? null : $"0x{FirstBad:x}: {Detail}");
}

/// <summary>
/// Whole-page contents for stamped behaviours (<c>"content"</c> in a workload file), so a synthetic
/// write pattern can be studied with realistic compressibility. The page is a function of the
/// page number and stamp, with the stamp word at its usual offset, so the self-check still knows
/// every byte:
///   zero-fill:N   the last N % of the page zero, the rest pseudo-random bytes from (page, stamp)
///   trace:PATH    a real page of a recorded trace, chosen by a hash of (page, stamp)
/// </summary>
internal sealed class PageContent
{
    private readonly int _zeroPercent = -1;
    private readonly IRecordedTrace? _trace;
    private readonly long _tracePages;
    private readonly byte[] _page;

    private PageContent(string spec, int pageSize)
    {
        _page = new byte[pageSize];
        if (spec.StartsWith("zero-fill:", StringComparison.Ordinal))
            _zeroPercent = int.Parse(spec.AsSpan("zero-fill:".Length), System.Globalization.CultureInfo.InvariantCulture);
        else if (spec.StartsWith("trace:", StringComparison.Ordinal))
        {
            _trace = TraceLibrary.Get(spec["trace:".Length..]);
            _tracePages = _trace.ContentPages;
        }
        else
            throw new InvalidDataException($"unknown page contents '{spec}'");
    }

    private static readonly ConditionalWeakTable<ProgramImage, PageContent> Cache = new();

    /// <summary>The program's contents, or null for plain stamped pages.</summary>
    public static PageContent? Of(ProgramImage prog, int pageSize) =>
        prog.Content is null ? null : Cache.GetValue(prog, p => new PageContent(p.Content!, pageSize));

    /// <summary>The page's bytes for <paramref name="stamp"/> (a buffer reused by the next call).</summary>
    public byte[] Expected(ulong key, ulong page, ulong stamp, int wordBits)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(_page.AsSpan());
        ulong seed = Rng.Mix(key ^ (page * 0x9E3779B97F4A7C15UL) ^ (stamp * 0xD1B54A32D192ED03UL) ^ 0xC0FFEE);
        if (_trace is not null)
        {
            const int TracePage = 4096;
            for (int off = 0, j = 0; off < _page.Length; off += TracePage, j++)
                _trace.ReadContentPage((long)((seed + (ulong)j) % (ulong)_tracePages), _page.AsSpan(off, TracePage));
        }
        else
        {
            int random = words.Length * (100 - _zeroPercent) / 100;
            for (int i = 0; i < random; i++)
                words[i] = Rng.Mix(seed + (ulong)i);
            words[random..].Clear();
        }
        words[(int)(Stamped.Offset(page, wordBits) >> 3)] = Stamped.DataWord(key, page, stamp);
        return _page;
    }
}

using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace CriuSharp.SimKernel.Mm;

/// <summary>
/// How a fault ended. Sigbus: a hugetlb page could not be had (pool exhausted, no reservation), or a
/// missing page under UFFD_FEATURE_SIGBUS. Blocked: the thread sleeps on a userfaultfd that nobody
/// woke (the access does not complete). Retry: internal, the fault is run again (VM_FAULT_RETRY).
/// </summary>
public enum FaultResult { Ok, Segv, Oom, Sigbus, Blocked, Retry }

/// <summary>
/// Page faults and memory accesses. A CPU access that the entry allows only sets the hardware
/// accessed/dirty bits (S2: never soft-dirty); everything else goes through <see cref="HandleFault"/>,
/// which follows mm/memory.c: empty entry → anonymous/file fault; swap entry → swap-in; present but
/// write-protected → reuse or copy (S5), each ending in "make dirty", which sets soft-dirty (S1).
/// </summary>
public sealed partial class MmStruct
{
    /// <summary>Resolves <paramref name="va"/> to a frame for the access, faulting as needed.</summary>
    internal (FaultResult Result, long Pfn) Translate(ulong va, bool write, bool force)
    {
        ulong okMask = _arch.ProtNoneClear | (write ? _arch.Write : 0);
        var pmd = Pt.PmdTableFor(va);
        if (pmd is not null)
        {
            int slot = Pt.PmdIndex(va);
            ulong h = pmd.Huge[slot];
            if (h != 0)
            {
                if ((h & okMask) == okMask && _arch.IsPresent(h))
                {
                    pmd.Huge[slot] = h | _arch.Accessed | (write ? _arch.Dirty : 0);
                    return (FaultResult.Ok, _arch.Pfn(h) + ((long)(va >> _arch.PageShift) & (_arch.PagesPerHuge - 1)));
                }
            }
            else if (pmd.Pte[slot] is { } t)
            {
                int i = Pt.PteIndex(va);
                ulong e = t.E[i];
                if ((e & okMask) == okMask && _arch.IsPresent(e))
                {
                    t.E[i] = e | _arch.Accessed | (write ? _arch.Dirty : 0);
                    return (FaultResult.Ok, _arch.Pfn(e));
                }
            }
        }
        return HandleFault(va, write, force);
    }

    private static bool AccessAllowed(VmArea v, bool write, bool force) =>
        write ? v.CanWrite || (force && (v.Flags & VmaFlags.MayWrite) != 0)
              : v.CanRead || v.CanExec || (force && (v.Flags & VmaFlags.MayRead) != 0);

    /// <summary>
    /// Bound on wakes that do not resolve a missing page (a monitor answering with UFFDIO_WAKE alone):
    /// the kernel would retry forever, the simulator reports the thread as still asleep instead.
    /// </summary>
    private const int MaxUserfaultRetries = 64;

    /// <summary>handle_mm_fault: returns the frame the access should use, retrying after a userfaultfd wake.</summary>
    internal (FaultResult, long) HandleFault(ulong va, bool write, bool force)
    {
        for (int tries = 0; ; tries++)
        {
            var r = HandleFaultOnce(va, write, force);
            if (r.Item1 != FaultResult.Retry)
                return r;
            if (tries == MaxUserfaultRetries)
                return (FaultResult.Blocked, -1);
        }
    }

    /// <summary>
    /// handle_userfault(VM_UFFD_MISSING): the thread sleeps with a message queued; the monitor runs.
    /// Woken: the fault is retried. UFFD_FEATURE_SIGBUS: SIGBUS instead of a message.
    /// </summary>
    private (FaultResult, long) MissingUserfault(Uffd.Userfaultfd ctx, ulong va, bool write)
    {
        if ((ctx.Features & UffdConstants.FeatureSigbus) != 0)
        {
            PendingSigbus = true;
            return (FaultResult.Sigbus, -1);
        }
        var task = Current;
        Current = null; // the monitor's own accesses are not the sleeping thread's
        var w = ctx.Wait(va & _arch.PageMask, va, write, task);
        Current = task;
        return w.Woken ? (FaultResult.Retry, -1) : (FaultResult.Blocked, -1);
    }

    private (FaultResult, long) HandleFaultOnce(ulong va, bool write, bool force)
    {
        if (Dead)
            return (FaultResult.Segv, -1);
        int vi = FindIndex(va);
        if (vi < 0 && !TryExpandStack(va, out vi))
            return (FaultResult.Segv, -1);
        var vma = _vmas[vi];
        if (!AccessAllowed(vma, write, force))
            return (FaultResult.Segv, -1);
        if ((vma.Flags & VmaFlags.PfnMap) != 0)
            return write ? (FaultResult.Segv, -1) : (FaultResult.Ok, _mem.ZeroPfn);
        // do_anonymous_page / shmem_get_folio_gfp: a missing page of a VMA registered for missing
        // faults goes to the userfaultfd monitor instead of being filled by the kernel.
        if ((vma.Flags & VmaFlags.UffdMissing) != 0 && vma.Uffd is { } missingCtx && !vma.IsHugetlb && UffdPageMissing(vma, va))
            return MissingUserfault(missingCtx, va, write);
        MinorFaults++;
        if (Current is { } cur)
            cur.MinFlt++;
        if (vma.IsHugetlb)
        {
            var hr = HugetlbFault(vma, va, write);
            if (hr.Item1 == FaultResult.Sigbus)
                PendingSigbus = true;
            return hr;
        }

        var pmd = Pt.EnsurePmdTable(va);
        int slot = Pt.PmdIndex(va);
        if (pmd.Huge[slot] != 0)
        {
            var r = HugeFault(vma, pmd, slot, va, write);
            if (r.Item1 != FaultResult.Ok || r.Item2 >= 0)
                return r;
            // The huge page was split: continue at page level.
        }
        else if (pmd.Pte[slot] is null && ThpEligible(vma, va))
        {
            var r = HugeAnonFault(vma, pmd, slot, va, write);
            if (r.Item1 != FaultResult.Ok || r.Item2 >= 0)
                return r;
        }

        var t = Pt.EnsurePteTable(va);
        int i = Pt.PteIndex(va);
        ulong e = t.E[i];
        if (e == 0)
            return NoPageFault(vma, t, i, va, write, withUffdWp: false);
        if (_arch.IsMarker(e))
        {
            ulong marker = _arch.SwapOffset(e);
            if ((marker & Arch.ArchProfile.MarkerGuard) != 0)
                return (FaultResult.Segv, -1);
            // uffd-wp marker: a read keeps the range protected (zero page mapped with the bit);
            // a write is resolved by the kernel in async mode and the page counts as written.
            bool keepWp = !write;
            Pt.Set(t, i, 0);
            if (write)
                UffdWpEvent(vma, va);
            return NoPageFault(vma, t, i, va, write, withUffdWp: keepWp);
        }
        if (!_arch.IsPresent(e))
            return SwapInFault(vma, t, i, va, e, write);
        if (_arch.IsProtNone(e))
            Pt.Set(t, i, e = _arch.MkAccessible(e));
        if (!write)
        {
            t.E[i] = e | _arch.Accessed;
            return (FaultResult.Ok, _arch.Pfn(e));
        }
        if (_arch.IsWritable(e))
        {
            t.E[i] = e | _arch.Accessed | _arch.Dirty;
            return (FaultResult.Ok, _arch.Pfn(e));
        }
        return WpFault(vma, t, i, va, e, force);
    }

    /// <summary>A stack VMA grows down to cover an access just below it (no VM_SOFTDIRTY marking, S10.7).</summary>
    private bool TryExpandStack(ulong va, out int index)
    {
        index = FirstEndingAbove(va);
        if (index >= _vmas.Count)
            return false;
        var v = _vmas[index];
        const ulong stackGuardGap = 256UL << 12;
        const ulong maxStack = 8UL << 20;
        if ((v.Flags & VmaFlags.GrowsDown) == 0 || va >= v.Start || v.Start - va > stackGuardGap || v.End - va > maxStack)
            return false;
        ulong newStart = va & _arch.PageMask;
        if (index > 0 && _vmas[index - 1].End > newStart - stackGuardGap)
            return false;
        v.Start = newStart;
        return true;
    }

    private bool ThpEligible(VmArea vma, ulong va)
    {
        var mode = _k.ThpMode;
        if (mode == ThpMode.Never || vma.File is not null || vma.IsShared)
            return false;
        if ((vma.Flags & VmaFlags.NoHugePage) != 0)
            return false;
        if (mode == ThpMode.Madvise && (vma.Flags & VmaFlags.HugePage) == 0)
            return false;
        ulong hb = va & ~(_arch.HugePageSize - 1);
        return hb >= vma.Start && hb + _arch.HugePageSize <= vma.End;
    }

    private (FaultResult, long) HugeAnonFault(VmArea vma, PmdTable pmd, int slot, ulong va, bool write)
    {
        long sub = (long)(va >> _arch.PageShift) & (_arch.PagesPerHuge - 1);
        if (!write)
        {
            long hz = _k.HugeZeroPfn();
            if (hz < 0)
                return (FaultResult.Ok, -1);
            pmd.Huge[slot] = _arch.MakeHuge(hz, writable: false, dirty: false);
            return (FaultResult.Ok, hz + sub);
        }
        long head = _mem.AllocateHuge();
        if (head < 0)
            return (FaultResult.Ok, -1); // fall back to small pages
        for (long p = head; p < head + _arch.PagesPerHuge; p++)
            _mem.Map(p);
        CountIn(head, vma, _arch.PagesPerHuge);
        if (vma.AnonVmaId == 0)
            vma.AnonVmaId = _k.NextAnonVmaId();
        // S9: a write fault that creates a THP marks the whole PMD soft-dirty.
        pmd.Huge[slot] = _arch.MakeHuge(head, vma.CanWrite, dirty: true);
        return (FaultResult.Ok, head + sub);
    }

    /// <summary>Fault on a PMD-mapped page. Returns pfn -1 with Ok when it split the PMD instead.</summary>
    private (FaultResult, long) HugeFault(VmArea vma, PmdTable pmd, int slot, ulong va, bool write)
    {
        ulong h = pmd.Huge[slot];
        long head = _arch.Pfn(h);
        long sub = (long)(va >> _arch.PageShift) & (_arch.PagesPerHuge - 1);
        if (_arch.IsProtNone(h))
            pmd.Huge[slot] = h = _arch.MkAccessible(h);
        if (!write)
        {
            pmd.Huge[slot] = h | _arch.Accessed;
            return (FaultResult.Ok, head + sub);
        }
        if (_arch.IsWritable(h))
        {
            pmd.Huge[slot] = h | _arch.Accessed | _arch.Dirty;
            return (FaultResult.Ok, head + sub);
        }
        bool uffdWp = _arch.UffdWp != 0 && (h & _arch.UffdWp) != 0;
        if (uffdWp)
        {
            // Async uffd-wp resolves a write to a THP by splitting it: tracking stays at 4 KiB.
            SplitHuge(pmd, slot);
            return (FaultResult.Ok, -1);
        }
        WpFaults++;
        if (Current is { } wpc)
            wpc.WpFlt++;
        if (_mem.Kind(head) == PhysicalMemory.FrameKind.Zero)
        {
            long nh = _mem.AllocateHuge();
            if (nh < 0)
            {
                SplitHuge(pmd, slot);
                return (FaultResult.Ok, -1);
            }
            for (long p = nh; p < nh + _arch.PagesPerHuge; p++)
                _mem.Map(p);
            CountIn(nh, vma, _arch.PagesPerHuge);
            pmd.Huge[slot] = _arch.MakeHuge(nh, vma.CanWrite, dirty: true);
            return (FaultResult.Ok, nh + sub);
        }
        for (long p = head; p < head + _arch.PagesPerHuge; p++)
        {
            if (_mem.MapCount(p) != 1)
            {
                // Shared after fork: split and copy the one page (do_huge_pmd_wp_page falls back).
                SplitHuge(pmd, slot);
                return (FaultResult.Ok, -1);
            }
        }
        // S5/S9: exclusive THP reused; the whole PMD becomes dirty and soft-dirty.
        ulong ne = _arch.MkDirty(h);
        pmd.Huge[slot] = vma.CanWrite ? _arch.MkWrite(ne) : ne;
        return (FaultResult.Ok, head + sub);
    }

    private (FaultResult, long) NoPageFault(VmArea vma, PteTable t, int i, ulong va, bool write, bool withUffdWp)
    {
        ulong wpBit = withUffdWp ? _arch.UffdWp : 0;
        if (vma.File is null)
        {
            if (!write)
            {
                // S4: the shared zero page, read-only, neither dirty nor soft-dirty.
                Pt.Set(t, i, _arch.MakePresent(_mem.ZeroPfn, writable: false, dirty: false) | wpBit);
                return (FaultResult.Ok, _mem.ZeroPfn);
            }
            long pfn = _mem.AllocateZeroed(PhysicalMemory.FrameKind.Anon);
            if (pfn < 0)
                return (FaultResult.Oom, -1);
            // S3: first write installs a fresh page, writable, dirty and soft-dirty.
            InstallPage(t, i, _arch.MakePresent(pfn, vma.CanWrite, dirty: true), pfn, vma);
            return (FaultResult.Ok, pfn);
        }
        long idx = vma.PgOff + (long)((va - vma.Start) >> _arch.PageShift);
        // A page wholly past the end of a regular file: SIGBUS (filemap_fault).
        if (!vma.File.IsShmem && (long)((ulong)idx << _arch.PageShift) >= vma.File.Size)
        {
            PendingSigbus = true;
            return (FaultResult.Sigbus, -1);
        }
        long cache = _k.Fs.GetPage(vma.File, idx);
        if (cache < 0)
            return (FaultResult.Oom, -1);
        if (vma.IsShared)
        {
            // With tracking armed the VMA wants write-notify, so read faults map read-only (C1a).
            bool writeNotify = SoftDirtyEnabled && !vma.SoftDirtyFlag;
            bool writable = vma.CanWrite && (write || !writeNotify);
            InstallPage(t, i, _arch.MakePresent(cache, writable, dirty: write) | wpBit, cache, vma);
            return (FaultResult.Ok, cache);
        }
        if (!write)
        {
            InstallPage(t, i, _arch.MakePresent(cache, writable: false, dirty: false) | wpBit, cache, vma);
            return (FaultResult.Ok, cache);
        }
        long copy = _mem.AllocateZeroed(PhysicalMemory.FrameKind.Anon);
        if (copy < 0)
            return (FaultResult.Oom, -1);
        _mem.Page(cache).CopyTo(_mem.PageMut(copy));
        InstallPage(t, i, _arch.MakePresent(copy, vma.CanWrite, dirty: true), copy, vma);
        return (FaultResult.Ok, copy);
    }

    /// <summary>Swap-in restores soft-dirty and uffd-wp from the swap entry (K1).</summary>
    private (FaultResult, long) SwapInFault(VmArea vma, PteTable t, int i, ulong va, ulong e, bool write)
    {
        ulong slot = _arch.SwapOffset(e);
        long pfn = _mem.AllocateZeroed(PhysicalMemory.FrameKind.Anon);
        if (pfn < 0)
            return (FaultResult.Oom, -1);
        _k.Swap.Read(slot).CopyTo(_mem.PageMut(pfn));
        bool sd = (e & _arch.SwpSoftDirty) != 0 && _k.Version.SwapKeepsSoftDirty;
        bool wp = _arch.SwpUffdWp != 0 && (e & _arch.SwpUffdWp) != 0;
        bool exclusive = (e & _arch.SwpExclusive) != 0 || _k.Swap.UseCount(slot) == 1;
        _k.Swap.Release(slot);
        SwapEntries--;
        MajorFaults++;
        if (Current is { } cur)
            cur.MajFlt++;
        Pt.Set(t, i, 0);
        ulong ne;
        if (write)
        {
            if (wp)
                UffdWpEvent(vma, va);
            ne = _arch.MakePresent(pfn, vma.CanWrite && exclusive, dirty: true);
        }
        else
        {
            ne = _arch.MakePresent(pfn, writable: false, dirty: false);
            if (sd) ne |= _arch.SoftDirty;
            if (wp) ne |= _arch.UffdWp;
        }
        InstallPage(t, i, ne, pfn, vma);
        return (FaultResult.Ok, pfn);
    }

    /// <summary>
    /// Write to a present, write-protected page (S5): an exclusive anonymous page is reused in place,
    /// a shared one (zero page, fork, page cache of a private file) is copied; shared mappings are made
    /// writable. Every path ends in "make dirty", so the page reads soft-dirty afterwards.
    /// </summary>
    private (FaultResult, long) WpFault(VmArea vma, PteTable t, int i, ulong va, ulong e, bool force)
    {
        WpFaults++;
        if (Current is { } cur)
            cur.WpFlt++;
        if (_arch.UffdWp != 0 && (e & _arch.UffdWp) != 0)
        {
            e &= ~_arch.UffdWp;
            UffdWpEvent(vma, va);
        }
        long pfn = _arch.Pfn(e);
        var kind = _mem.Kind(pfn);
        if (vma.IsShared)
        {
            Pt.Set(t, i, _arch.MkDirty(vma.CanWrite ? _arch.MkWrite(e) : e));
            return (FaultResult.Ok, pfn);
        }
        if (kind == PhysicalMemory.FrameKind.Anon && _mem.MapCount(pfn) == 1)
        {
            ulong ne = _arch.MkDirty(e);
            Pt.Set(t, i, vma.CanWrite ? _arch.MkWrite(ne) : ne);
            return (FaultResult.Ok, pfn);
        }
        long copy = _mem.AllocateZeroed(PhysicalMemory.FrameKind.Anon);
        if (copy < 0)
            return (FaultResult.Oom, -1);
        if (kind != PhysicalMemory.FrameKind.Zero)
            _mem.Page(pfn).CopyTo(_mem.PageMut(copy));
        ZapEntry(t, i, vma, removeGuards: true);
        InstallPage(t, i, _arch.MakePresent(copy, vma.CanWrite, dirty: true), copy, vma);
        _ = force;
        return (FaultResult.Ok, copy);
    }

    /// <summary>The frames behind consecutive pages from <paramref name="va"/>, each faulted in for a forced read.</summary>
    internal bool FrameAddresses(ulong va, Span<nint> frames)
    {
        ulong ps = (ulong)_arch.PageSize;
        for (int i = 0; i < frames.Length; i++)
        {
            var (r, pfn) = Translate(va + (ulong)i * ps, write: false, force: true);
            if (r != FaultResult.Ok)
                return false;
            frames[i] = _mem.Address(pfn);
        }
        return true;
    }

    private void UffdWpEvent(VmArea vma, ulong va) => UffdFor(vma)?.OnWriteProtectFault(va & _arch.PageMask);

    // ---- accesses ------------------------------------------------------------------------

    /// <summary>
    /// The errno an access reports for a fault: ENOMEM (the OOM killer), EAGAIN (the thread sleeps on
    /// a userfaultfd; a real reader would wait for the monitor), else EFAULT.
    /// </summary>
    internal static Errno ToErrno(FaultResult r) => r switch
    {
        FaultResult.Oom => Errno.ENOMEM,
        FaultResult.Blocked => Errno.EAGAIN,
        _ => Errno.EFAULT,
    };

    internal static FaultResult FromErrno(Errno e) => e switch
    {
        Errno.ENOMEM => FaultResult.Oom,
        Errno.EAGAIN => FaultResult.Blocked,
        _ => FaultResult.Segv,
    };

    /// <summary>
    /// Copies between a task's memory and <paramref name="buf"/> as the task itself (force = false) or
    /// as a ptrace-capable reader/writer such as /proc/PID/mem (force = true: private read-only
    /// mappings can be written by copy-on-write). Returns the bytes moved, or EFAULT at the first
    /// address that cannot be accessed (and sets <paramref name="faultAddress"/>).
    /// </summary>
    public SysResult Access(ulong va, Span<byte> buf, bool write, bool force, out ulong faultAddress)
    {
        faultAddress = 0;
        int done = 0;
        int ps = _arch.PageSize;
        while (done < buf.Length)
        {
            ulong at = va + (ulong)done;
            var (r, pfn) = Translate(at, write, force);
            if (r != FaultResult.Ok)
            {
                faultAddress = at;
                return done > 0 ? SysResult.Success(done) : ToErrno(r);
            }
            int off = (int)(at & (ulong)(ps - 1));
            int n = Math.Min(ps - off, buf.Length - done);
            if (write)
                buf.Slice(done, n).CopyTo(_mem.PageMut(pfn).Slice(off, n));
            else
                _mem.Page(pfn).Slice(off, n).CopyTo(buf.Slice(done, n));
            done += n;
        }
        return SysResult.Success(done);
    }

    /// <summary>
    /// The hot path of simulated CPU stores: an 8-byte store through a writable entry touches only the
    /// entry's hardware bits and the frame. Returns false when the store faulted fatally (SIGSEGV/OOM).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public unsafe bool StoreU64(ulong va, ulong value, out FaultResult fault)
    {
        fault = FaultResult.Ok;
        ulong* word = new FastWalk(this).Word(va);
        if (word == null)
            return StoreU64Slow(va, value, out fault);
        *word = FastWalk.Le(value);
        return true;
    }

    /// <summary>
    /// Cache hints for a run of stores the task is about to make (a program that knows its next
    /// addresses, as an out-of-order CPU does): first the page-table entries that map
    /// <paramref name="vas"/> are requested, then, through those entries, the frame lines of the
    /// stores that will fault (a write-protected entry: the fault handler will read that frame).
    /// Changes no state; never faults; does nothing on hosts without x86 prefetch.
    /// </summary>
    internal void PrefetchForStores(ReadOnlySpan<ulong> vas)
    {
        if (!System.Runtime.Intrinsics.X86.Sse.IsSupported)
            return;
        var walk = new FastWalk(this);
        foreach (var va in vas)
            walk.PrefetchEntry(va);
        foreach (var va in vas)
            walk.PrefetchFaultingWord(va);
    }

    /// <summary>
    /// Stores <c>values[j]</c> at <c>vas[j]</c>, in order, for as long as each store needs no fault;
    /// returns how many were stored. The caller runs the store at the returned index through
    /// <see cref="StoreU64"/> (which faults as needed) and goes on after it. Nothing else runs in
    /// between, so the walk's tables and frame arrays are read once for the whole run.
    /// </summary>
    internal unsafe int StoreRun(ReadOnlySpan<ulong> vas, ReadOnlySpan<ulong> values)
    {
        var walk = new FastWalk(this);
        for (int j = 0; j < vas.Length; j++)
        {
            ulong* word = walk.Word(vas[j]);
            if (word == null)
                return j;
            *word = FastWalk.Le(values[j]);
        }
        return vas.Length;
    }

    /// <summary>
    /// The exchange counterpart of <see cref="StoreRun"/>: <c>olds[j]</c> receives each word's old value.
    /// </summary>
    internal unsafe int ExchangeRun(ReadOnlySpan<ulong> vas, ReadOnlySpan<ulong> values, Span<ulong> olds)
    {
        var walk = new FastWalk(this);
        for (int j = 0; j < vas.Length; j++)
        {
            ulong* word = walk.Word(vas[j]);
            if (word == null)
                return j;
            olds[j] = FastWalk.Le(*word);
            *word = FastWalk.Le(values[j]);
        }
        return vas.Length;
    }

    /// <summary>
    /// The no-fault store path's page walk, with everything it reads held in locals: the upper
    /// levels, the masks and the frame arrays. Valid while no fault or allocation runs, which is
    /// why it lives only for one call or one run of stores.
    /// </summary>
    internal readonly unsafe ref struct FastWalk
    {
        private readonly PmdTable?[]?[] _pgd;
        private readonly ulong _topEntries, _writeOk, _accessedDirty, _pfnMask, _offsetMask, _ptrsMask, _presentTest;
        private readonly int _topShift, _pmdShift, _pageShift, _pfnShift;
        private readonly PhysicalMemory.FrameWindow _frames;

        public FastWalk(MmStruct mm)
        {
            var pt = mm.Pt;
            _pgd = pt.Pgd;
            _topEntries = pt.TopEntries;
            _topShift = pt.TopShift;
            _pmdShift = pt.PmdShift;
            _pageShift = pt.PageShift;
            _ptrsMask = (ulong)pt.EntriesPerTable - 1;
            _writeOk = mm._writeOk;
            _accessedDirty = mm._accessedDirty;
            _pfnMask = mm._pfnMask;
            _pfnShift = mm._pfnShift;
            _offsetMask = mm._offsetMask;
            _presentTest = mm._arch.PresentTest;
            _frames = mm._mem.Window();
        }

        /// <summary>The entry that maps <paramref name="va"/>, if a page table holds it; else null.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private ulong[]? Entries(ulong va)
        {
            ulong top = va >> _topShift;
            if (top >= _topEntries)
                return null;
            var pmd = _pgd[top >> 9]?[top & 511];
            return pmd?.Entries[(va >> _pmdShift) & 511];
        }

        /// <summary>A cache hint for the entry that maps <paramref name="va"/>.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void PrefetchEntry(ulong va)
        {
            if (Entries(va) is { } entries)
                System.Runtime.Intrinsics.X86.Sse.Prefetch0(Unsafe.AsPointer(ref entries[(va >> _pageShift) & _ptrsMask]));
        }

        /// <summary>A cache hint for the frame line a store to <paramref name="va"/> will fault on (present, not writable).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void PrefetchFaultingWord(ulong va)
        {
            if (Entries(va) is not { } entries)
                return;
            ulong e = entries[(va >> _pageShift) & _ptrsMask];
            if ((e & _presentTest) != 0 && (e & _writeOk) != _writeOk)
                System.Runtime.Intrinsics.X86.Sse.Prefetch0(_frames.Peek((long)((e & _pfnMask) >> _pfnShift), va & _offsetMask));
        }

        /// <summary>Simulated memory is little-endian whatever the host is.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static ulong Le(ulong v) => BitConverter.IsLittleEndian ? v : BinaryPrimitives.ReverseEndianness(v);

        /// <summary>
        /// The host address of the aligned 8-byte word at <paramref name="va"/> when a store needs no
        /// fault (present, writable entry), with the entry's accessed and dirty bits set as the MMU
        /// sets them (written only when not yet set); else null.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public ulong* Word(ulong va)
        {
            ulong top = va >> _topShift;
            if ((va & 7) != 0 || top >= _topEntries)
                return null;
            var pud = _pgd[top >> 9];
            if (pud is null)
                return null;
            var pmd = pud[top & 511];
            if (pmd is null)
                return null;
            var entries = pmd.Entries[(va >> _pmdShift) & 511];
            if (entries is null)
                return null;
            ref ulong entry = ref entries[(va >> _pageShift) & _ptrsMask];
            ulong e = entry;
            if ((e & _writeOk) != _writeOk)
                return null;
            if ((e & _accessedDirty) != _accessedDirty)
                entry = e | _accessedDirty;
            return (ulong*)_frames.Mut((long)((e & _pfnMask) >> _pfnShift), va & _offsetMask);
        }
    }

    /// <summary>
    /// An aligned 8-byte exchange as the task (x86 XCHG): returns the old value and stores the new
    /// one through a single translation, faulting as a store does. Programs that keep a ledger
    /// (read the old entry, write the new) pay one page walk instead of two.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool ExchangeU64(ulong va, ulong value, out ulong old, out FaultResult fault)
    {
        fault = FaultResult.Ok;
        unsafe
        {
            ulong* word = new FastWalk(this).Word(va);
            if (word != null)
            {
                old = FastWalk.Le(*word);
                *word = FastWalk.Le(value);
                return true;
            }
        }
        return ExchangeU64Slow(va, value, out old, out fault);
    }

    private bool ExchangeU64Slow(ulong va, ulong value, out ulong old, out FaultResult fault)
    {
        old = 0;
        if ((va & 7) != 0)
        {
            fault = FaultResult.Segv; // a misaligned exchange is not supported (it could straddle pages)
            return false;
        }
        var (r, pfn) = Translate(va, write: true, force: false);
        fault = r;
        if (r != FaultResult.Ok)
            return false;
        var word = _mem.PageMut(pfn).Slice((int)(va & (ulong)(_arch.PageSize - 1)), 8);
        old = BinaryPrimitives.ReadUInt64LittleEndian(word);
        BinaryPrimitives.WriteUInt64LittleEndian(word, value);
        return true;
    }

    private bool StoreU64Slow(ulong va, ulong value, out FaultResult fault)
    {
        if ((va & 7) == 0)
        {
            // Aligned: one translation (faulting as needed), then the word.
            var (r, pfn) = Translate(va, write: true, force: false);
            fault = r;
            if (r != FaultResult.Ok)
                return false;
            BinaryPrimitives.WriteUInt64LittleEndian(_mem.PageMut(pfn).Slice((int)(va & _offsetMask), 8), value);
            return true;
        }
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        var a = Access(va, b, write: true, force: false, out _);
        fault = a.Ok ? FaultResult.Ok : FromErrno(a.Error);
        return a.Ok;
    }

    /// <summary>An 8-byte load as the task. Returns false when the load faulted fatally.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool LoadU64(ulong va, out ulong value, out FaultResult fault)
    {
        fault = FaultResult.Ok;
        ulong okMask = _arch.ProtNoneClear;
        var pmd = Pt.PmdTableFor(va);
        if (pmd is not null && pmd.Pte[Pt.PmdIndex(va)] is { } t)
        {
            int i = Pt.PteIndex(va);
            ulong e = t.E[i];
            if ((e & okMask) == okMask && _arch.IsPresent(e) && (va & 7) == 0)
            {
                t.E[i] = e | _arch.Accessed;
                value = BinaryPrimitives.ReadUInt64LittleEndian(
                    _mem.Page(_arch.Pfn(e)).Slice((int)(va & (ulong)(_arch.PageSize - 1))));
                return true;
            }
        }
        Span<byte> b = stackalloc byte[8];
        var r = Access(va, b, write: false, force: false, out _);
        value = r.Ok ? BinaryPrimitives.ReadUInt64LittleEndian(b) : 0;
        fault = r.Ok ? FaultResult.Ok : FromErrno(r.Error);
        return r.Ok;
    }
}

public sealed partial class MmStruct
{
    /// <summary>
    /// Copies a page's current contents without faulting or changing any state: present pages from
    /// their frame, swapped pages from the swap slot. Returns false for pages with no contents
    /// (not populated, marker, or unmapped). For tests and invariants, not for the Dumper.
    /// </summary>
    internal bool PeekPage(ulong va, Span<byte> page)
    {
        va &= _arch.PageMask;
        var pmd = Pt.PmdTableFor(va);
        if (pmd is null)
            return false;
        int slot = Pt.PmdIndex(va);
        if (pmd.Huge[slot] is var h && h != 0)
        {
            _mem.Page(_arch.Pfn(h) + ((long)(va >> _arch.PageShift) & (_arch.PagesPerHuge - 1))).CopyTo(page);
            return true;
        }
        ulong e = pmd.Pte[slot]?.E[Pt.PteIndex(va)] ?? 0;
        if (e == 0 || _arch.IsMarker(e))
            return false;
        if (_arch.IsPresent(e))
            _mem.Page(_arch.Pfn(e)).CopyTo(page);
        else
            _k.Swap.Read(_arch.SwapOffset(e)).CopyTo(page);
        return true;
    }
}

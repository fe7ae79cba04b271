using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Uffd;

/// <summary>The userfaultfd features this simulated kernel offers.</summary>
public static class UffdFeatures
{
    /// <summary>
    /// The features a 6.18 kernel reports (bits 0–16), less write-protect ones where the architecture
    /// lacks it, and less UFFD_FEATURE_EVENT_FORK: this simulator does not hand the monitor a new
    /// descriptor for a forked child (dup_userfaultfd), so it refuses the feature (EINVAL, as for any
    /// unknown bit) rather than accept it and deliver nothing. A child of a registered task therefore
    /// starts unregistered, which is what the kernel does without the feature.
    /// </summary>
    public static ulong Supported(Kernel k)
    {
        if (!k.Version.HasUserfaultfd)
            return 0;
        ulong all = ((1UL << 17) - 1) & ~UffdConstants.FeatureEventFork;
        if (!k.Version.HasUffdWpAsync)
            all &= ~(UffdConstants.FeatureWpAsync | UffdConstants.FeatureWpUnpopulated | UffdConstants.FeatureMove | UffdConstants.FeaturePoison);
        if (!k.Arch.HasUffdWp)
            all &= ~(UffdConstants.FeaturePagefaultFlagWp | UffdConstants.FeatureWpHugetlbfsShmem | UffdConstants.FeatureWpUnpopulated | UffdConstants.FeatureWpAsync);
        return all;
    }
}

/// <summary>A write-protect fault reported to a non-async context (a handler would read it).</summary>
public readonly record struct UffdMessage(ulong Address, bool WriteProtect);

/// <summary>
/// A thread asleep in handle_userfault on a missing page (fs/userfaultfd.c's userfaultfd_wait_queue):
/// its message, whether a read(2) has returned it yet, and whether a wake has reached it.
/// </summary>
public sealed class UffdWaiter
{
    internal UffdWaiter(UffdMsg msg, SimTask? task)
    {
        Msg = msg;
        Task = task;
    }

    public UffdMsg Msg { get; }
    /// <summary>The sleeping thread; null for an access made on no task's behalf (a /proc/PID/mem reader).</summary>
    public SimTask? Task { get; }
    /// <summary>Read by the monitor: refiled from the pending queue to the waiting one (not returned again).</summary>
    public bool Read { get; internal set; }
    public bool Woken { get; internal set; }
}

/// <summary>
/// A userfaultfd context (fs/userfaultfd.c, mm/userfaultfd.c).
/// <para>
/// Write-protect: registration, arming and disarming, and the async mode in which the kernel
/// resolves write faults itself (UFFD_FEATURE_WP_ASYNC, Documentation/admin-guide/mm/userfaultfd.rst).
/// Without WP_ASYNC a fault is queued as a message and the write proceeds, as if a handler had
/// answered at once.
/// </para>
/// <para>
/// Missing pages: a thread that touches a page missing from a VMA registered with
/// UFFDIO_REGISTER_MODE_MISSING sleeps with a UFFD_EVENT_PAGEFAULT message queued, until UFFDIO_COPY,
/// UFFDIO_ZEROPAGE, UFFDIO_WAKE, UFFDIO_UNREGISTER or close wakes it; it then retries the fault.
/// The simulated machine runs one thread at a time, so the monitor (<see cref="SetMonitor"/>) runs
/// while the thread sleeps. A thread nobody wakes stays asleep (<see cref="SimTask.UserfaultWait"/>):
/// its access returns EAGAIN to the caller of the simulator and the task does not run again until
/// it is woken.
/// </para>
/// <para>
/// Non-cooperative events (UFFD_FEATURE_EVENT_REMAP, _REMOVE, _UNMAP, negotiated at UFFDIO_API):
/// mremap, madvise(MADV_DONTNEED/MADV_FREE) and munmap of a registered range (munmap also when
/// mmap(MAP_FIXED), mremap or brk removes it) queue a message and the thread waits until the monitor
/// has read it (userfaultfd_event_wait_completion), so the monitor runs here as for a fault. While an
/// event is queued and unread, UFFDIO_COPY and UFFDIO_ZEROPAGE fail with EAGAIN (ctx->mmap_changing),
/// so a monitor cannot place a page at an address the task has just changed without learning of it.
/// </para>
/// <code>
///   fault on missing page ──► waiter{msg} ──► pending ──read(2)──► waiting ──COPY/ZEROPAGE/WAKE──► woken ─► retry
///                                     └──────────────── WAKE, UNREGISTER, close ──────────────────┘
/// </code>
/// </summary>
public sealed partial class Userfaultfd : IUserfaultfd
{
    private readonly MmStruct _mm;
    private readonly Queue<UffdMessage> _messages = new();
    /// <summary>Sleeping threads in the order they faulted (find_userfault reads FIFO).</summary>
    private readonly List<UffdWaiter> _waiters = [];
    /// <summary>Non-cooperative events not yet read (event_wqh).</summary>
    private readonly Queue<UffdMsg> _events = new();
    private Action<IUserfaultfd>? _monitor;
    private bool _inMonitor;

    internal Userfaultfd(MmStruct mm) => _mm = mm;

    internal static Userfaultfd Restore(MmStruct owner, bool apiDone, ulong features, long faults, IEnumerable<UffdMessage> messages)
    {
        var u = new Userfaultfd(owner) { ApiDone = apiDone, Features = features, WriteFaults = faults };
        foreach (var m in messages)
            u._messages.Enqueue(m);
        return u;
    }

    public bool ApiDone { get; private set; }
    public ulong Features { get; private set; }
    public bool Async => (Features & UffdConstants.FeatureWpAsync) != 0;
    public bool WpUnpopulated => (Features & UffdConstants.FeatureWpUnpopulated) != 0;
    public long WriteFaults { get; private set; }
    /// <summary>Missing-page faults that queued a message (each retry after a wake without a page counts again).</summary>
    public long MissingFaults { get; private set; }
    /// <summary>close(2) ran: nothing is registered any more and no thread can wait here.</summary>
    public bool Released { get; private set; }
    public IReadOnlyCollection<UffdMessage> PendingMessages => _messages;
    /// <summary>Non-cooperative events queued and not yet read; non-zero is the kernel's mmap_changing.</summary>
    public IReadOnlyCollection<UffdMsg> PendingEvents => _events;
    /// <summary>Threads asleep on a missing page, read or not.</summary>
    public IReadOnlyList<UffdWaiter> Waiters => _waiters;

    /// <summary>UFFDIO_API: returns the features the kernel supports; fails on an unsupported request.</summary>
    public SysResult ApiHandshake(ulong api, ulong features, out ulong supported)
    {
        supported = 0;
        // userfaultfd_api: a wrong api, an unknown feature bit or a second call is EINVAL, and the
        // err_out path zeroes the whole uffdio_api the caller gets back.
        ulong all = UffdFeatures.Supported(_mm.Kernel);
        if (ApiDone || api != UffdConstants.Api || (features & ~all) != 0)
            return Errno.EINVAL;
        Features = features;
        ApiDone = true;
        supported = all;
        return SysResult.Success();
    }

    /// <summary>UFFDIO_REGISTER over whole mapped VMAs of the range.</summary>
    public SysResult Register(ulong start, ulong len, ulong mode)
    {
        if (!ApiDone || Released)
            return Errno.EINVAL;
        if (mode == 0 || (mode & ~(UffdConstants.RegisterModeMissing | UffdConstants.RegisterModeWp | UffdConstants.RegisterModeMinor)) != 0)
            return Errno.EINVAL;
        if ((mode & UffdConstants.RegisterModeWp) != 0 && !_mm.Kernel.Arch.HasUffdWp)
            return Errno.EINVAL;
        return _mm.UffdRegister(this, start, len, mode);
    }

    /// <summary>
    /// UFFDIO_REGISTER as the ioctl returns it: also the <c>ioctls</c> mask of range ioctls now valid
    /// on the range (bit = _UFFDIO_* number). For anonymous and shmem memory that is WAKE, COPY,
    /// ZEROPAGE, MOVE and POISON, plus WRITEPROTECT in WP mode and CONTINUE in MINOR mode.
    /// </summary>
    public SysResult Register(ulong start, ulong len, ulong mode, out ulong ioctls)
    {
        var r = Register(start, len, mode);
        ioctls = 0;
        if (r.Ok)
        {
            ioctls = 0x1FCUL; // bits 2..8: _UFFDIO_WAKE .. _UFFDIO_POISON
            if ((mode & UffdConstants.RegisterModeWp) == 0) ioctls &= ~(1UL << UffdConstants.IoctlWriteProtect);
            if ((mode & UffdConstants.RegisterModeMinor) == 0) ioctls &= ~(1UL << UffdConstants.IoctlContinue);
        }
        return r;
    }

    public SysResult Unregister(ulong start, ulong len)
    {
        if (!ApiDone)
            return Errno.EINVAL;
        return _mm.UffdUnregister(this, start, len);
    }

    /// <summary>UFFDIO_WRITEPROTECT: arm (wp = true) or disarm a registered range.</summary>
    public SysResult WriteProtect(ulong start, ulong len, bool wp) => _mm.UffdWriteProtect(this, start, len, wp);

    public bool TryReadMessage(out UffdMessage m) => _messages.TryDequeue(out m);

    internal void OnWriteProtectFault(ulong va)
    {
        WriteFaults++;
        if (!Async)
            _messages.Enqueue(new UffdMessage(va, WriteProtect: true));
    }

    // ---- missing pages -----------------------------------------------------------------------

    public SysResult Read(Span<byte> buffer)
    {
        if (!ApiDone)
            return Errno.EINVAL;
        DropDead();
        int n = 0;
        while (buffer.Length - n >= UffdMsg.Size)
        {
            var w = _waiters.Find(static x => !x.Read);
            if (w is not null)
            {
                w.Read = true;
                w.Msg.WriteTo(buffer[n..]);
            }
            else if (_messages.TryDequeue(out var wp))
            {
                // A write-protect fault of a synchronous context: the write already went on.
                new UffdMsg(UffdConstants.EventPagefault, UffdConstants.PagefaultFlagWrite | UffdConstants.PagefaultFlagWp, wp.Address, 0)
                    .WriteTo(buffer[n..]);
            }
            else if (_events.TryDequeue(out var ev))
            {
                // Faults first, then events (userfaultfd_ctx_read). Reading an event completes it:
                // the thread that raised it goes on and mmap_changing drops.
                ev.WriteTo(buffer[n..]);
            }
            else
                break;
            n += UffdMsg.Size;
        }
        if (n > 0)
            return SysResult.Success(n);
        return buffer.Length < UffdMsg.Size ? Errno.EINVAL : Errno.EAGAIN;
    }

    public SysResult Copy(ulong dst, ReadOnlySpan<byte> src, ulong mode, out long copy) =>
        Fill(dst, (ulong)src.Length, src, zero: false, mode, out copy);

    public SysResult ZeroPage(ulong start, ulong len, ulong mode, out long zeropage) =>
        Fill(start, len, default, zero: true, mode, out zeropage);

    /// <summary>userfaultfd_copy and userfaultfd_zeropage: argument checks, mfill_atomic, then the wake.</summary>
    private SysResult Fill(ulong dst, ulong len, ReadOnlySpan<byte> src, bool zero, ulong mode, out long result)
    {
        result = 0;
        if (!ApiDone)
            return Errno.EINVAL;
        if (_events.Count > 0)
        {
            // userfaultfd_copy/zeropage: mmap_changing is set while an event waits to be read; the
            // ioctl stores -EAGAIN in copy/zeropage and fails before looking at the range.
            result = -(long)Errno.EAGAIN;
            return Errno.EAGAIN;
        }
        if (ValidateRange(dst, len) is { } bad)
            return bad;
        ulong allowed = zero ? UffdConstants.ZeropageModeDontWake : UffdConstants.CopyModeDontWake | UffdConstants.CopyModeWp;
        if ((mode & ~allowed) != 0)
            return Errno.EINVAL;
        if (_mm.Dead)
            return Errno.ESRCH;
        bool wp = !zero && (mode & UffdConstants.CopyModeWp) != 0;
        long r = _mm.MfillAtomic(dst, len, src, zero, wp);
        result = r;
        if (r < 0)
            return (Errno)(int)-r;
        ulong dontWake = zero ? UffdConstants.ZeropageModeDontWake : UffdConstants.CopyModeDontWake;
        if ((mode & dontWake) == 0)
            WakeRange(dst, (ulong)r);
        return (ulong)r == len ? SysResult.Success() : Errno.EAGAIN;
    }

    public SysResult Wake(ulong start, ulong len)
    {
        if (!ApiDone)
            return Errno.EINVAL;
        if (ValidateRange(start, len) is { } bad)
            return bad;
        WakeRange(start, len);
        return SysResult.Success();
    }

    public void SetMonitor(Action<IUserfaultfd>? onReadable) => _monitor = onReadable;

    public void Close()
    {
        if (Released)
            return;
        Released = true;
        _events.Clear();
        _mm.UffdRelease(this);
        WakeRange(0, 0);
        _monitor = null;
    }

    /// <summary>validate_range: page-aligned, non-empty, within the task size (and above mmap_min_addr, 64 KiB).</summary>
    private Errno? ValidateRange(ulong start, ulong len)
    {
        ulong mask = (ulong)_mm.Kernel.Arch.PageSize - 1;
        ulong taskSize = _mm.Kernel.Arch.TaskSize;
        if ((start & mask) != 0 || (len & mask) != 0 || len == 0 || start < MmapMinAddr || start >= taskSize || len > taskSize - start)
            return Errno.EINVAL;
        return null;
    }

    /// <summary>vm.mmap_min_addr's default (65536).</summary>
    private const ulong MmapMinAddr = 0x10000;

    /// <summary>userfaultfd_wake_function over both queues: len 0 wakes every waiter.</summary>
    internal void WakeRange(ulong start, ulong len)
    {
        for (int i = 0; i < _waiters.Count; i++)
        {
            var w = _waiters[i];
            ulong a = w.Msg.Address;
            if (len != 0 && (start > a || start + len <= a))
                continue;
            w.Woken = true;
            if (w.Task is { } t && ReferenceEquals(t.UserfaultWait, w))
                t.UserfaultWait = null;
            _waiters.RemoveAt(i--);
        }
    }

    /// <summary>
    /// handle_userfault for a missing page: queues the message, lets the monitor run (the thread's
    /// schedule()), and says whether the thread was woken (retry the fault) or still sleeps.
    /// </summary>
    internal UffdWaiter Wait(ulong address, ulong realAddress, bool write, SimTask? task)
    {
        MissingFaults++;
        ulong flags = write ? UffdConstants.PagefaultFlagWrite : 0;
        ulong reported = (Features & UffdConstants.FeatureExactAddress) != 0 ? realAddress : address;
        uint ptid = (Features & UffdConstants.FeatureThreadId) != 0 && task is not null ? (uint)task.Pid : 0;
        var w = new UffdWaiter(new UffdMsg(UffdConstants.EventPagefault, flags, reported, ptid), task);
        _waiters.Add(w);
        if (task is not null)
            task.UserfaultWait = w;
        RunMonitor(task);
        return w;
    }

    /// <summary>
    /// Lets the attached monitor (the lazy-pages daemon polling the descriptor) handle what was just
    /// queued while <paramref name="task"/> waits, unless it is the monitor's own call that queued it.
    /// </summary>
    private void RunMonitor(SimTask? task)
    {
        if (_monitor is not { } m || _inMonitor)
            return;
        _inMonitor = true;
        if (task is not null)
            task.Kernel.FaultingOperationNs = Workloads.WorkloadApi.OperationTimeNs(task);
        try
        {
            m(this);
        }
        finally
        {
            _inMonitor = false;
            if (task is not null)
                task.Kernel.FaultingOperationNs = 0;
        }
    }

    /// <summary>
    /// userfaultfd_event_wait_completion for REMAP, REMOVE and UNMAP: queues <paramref name="msg"/>
    /// and lets the monitor run while the thread waits for it to be read. A released context takes
    /// no events. With no monitor attached (nobody polls) the event stays queued and the thread goes
    /// on: the simulator cannot park a thread in the middle of a system call, so it does not hold it.
    /// </summary>
    internal void Event(UffdMsg msg, SimTask? task)
    {
        if (Released)
            return;
        _events.Enqueue(msg);
        RunMonitor(task);
    }

    /// <summary>A thread that died while asleep took its wait-queue entry with it.</summary>
    private void DropDead() => _waiters.RemoveAll(static w => w.Task is { Alive: false });
}

using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Uffd;

/// <summary>The userfaultfd features this simulated kernel offers.</summary>
public static class UffdFeatures
{
    /// <summary>The features a 6.18 kernel reports (bits 0–16), less write-protect ones where the architecture lacks it.</summary>
    public static ulong Supported(Kernel k)
    {
        if (!k.Version.HasUserfaultfd)
            return 0;
        ulong all = (1UL << 17) - 1;
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
/// A userfaultfd context limited to what tracking needs: write-protect registration, arming and
/// disarming, and the async mode in which the kernel resolves write faults itself (UFFD_FEATURE_WP_ASYNC, Documentation/admin-guide/mm/userfaultfd.rst).
/// Without WP_ASYNC a fault is queued as a message and the write proceeds, as if a handler had
/// answered at once.
/// </summary>
public sealed partial class Userfaultfd : IUserfaultfd
{
    private readonly MmStruct _mm;
    private readonly Queue<UffdMessage> _messages = new();

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
    public IReadOnlyCollection<UffdMessage> PendingMessages => _messages;

    /// <summary>UFFDIO_API: returns the features the kernel supports; fails on an unsupported request.</summary>
    public SysResult ApiHandshake(ulong api, ulong features, out ulong supported)
    {
        supported = UffdFeatures.Supported(_mm.Kernel);
        if (ApiDone || api != UffdConstants.Api)
            return Errno.EINVAL;
        if ((features & ~supported) != 0)
            return Errno.EINVAL;
        Features = features;
        ApiDone = true;
        return SysResult.Success();
    }

    /// <summary>UFFDIO_REGISTER with MODE_WP over whole mapped VMAs of the range.</summary>
    public SysResult Register(ulong start, ulong len, ulong mode)
    {
        if (!ApiDone)
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
            if ((mode & UffdConstants.RegisterModeWp) == 0) ioctls &= ~(1UL << 6);
            if ((mode & UffdConstants.RegisterModeMinor) == 0) ioctls &= ~(1UL << 7);
        }
        return r;
    }

    public SysResult Unregister(ulong start, ulong len) => _mm.UffdUnregister(this, start, len);

    /// <summary>UFFDIO_WRITEPROTECT: arm (wp = true) or disarm a registered range.</summary>
    public SysResult WriteProtect(ulong start, ulong len, bool wp) => _mm.UffdWriteProtect(this, start, len, wp);

    public bool TryReadMessage(out UffdMessage m) => _messages.TryDequeue(out m);

    internal void OnWriteProtectFault(ulong va)
    {
        WriteFaults++;
        if (!Async)
            _messages.Enqueue(new UffdMessage(va, WriteProtect: true));
    }
}

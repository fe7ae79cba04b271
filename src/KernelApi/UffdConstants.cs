namespace CriuSharp.KernelApi;

/// <summary>UFFD_FEATURE_* bits and UFFDIO_* modes (include/uapi/linux/userfaultfd.h).</summary>
public static class UffdConstants
{
    public const ulong Api = 0xAA;
    public const ulong FeaturePagefaultFlagWp = 1UL << 0;
    public const ulong FeatureEventFork = 1UL << 1;
    public const ulong FeatureEventRemap = 1UL << 2;
    public const ulong FeatureEventRemove = 1UL << 3;
    public const ulong FeatureMissingHugetlbfs = 1UL << 4;
    public const ulong FeatureMissingShmem = 1UL << 5;
    public const ulong FeatureEventUnmap = 1UL << 6;
    public const ulong FeatureSigbus = 1UL << 7;
    public const ulong FeatureThreadId = 1UL << 8;
    public const ulong FeatureMinorHugetlbfs = 1UL << 9;
    public const ulong FeatureMinorShmem = 1UL << 10;
    public const ulong FeatureExactAddress = 1UL << 11;
    public const ulong FeatureWpHugetlbfsShmem = 1UL << 12;
    public const ulong FeatureWpUnpopulated = 1UL << 13;
    public const ulong FeaturePoison = 1UL << 14;
    public const ulong FeatureWpAsync = 1UL << 15;
    public const ulong FeatureMove = 1UL << 16;

    public const ulong RegisterModeMissing = 1;
    public const ulong RegisterModeWp = 2;
    public const ulong RegisterModeMinor = 4;

    /// <summary>uffd_msg.event of a fault (0x12: "start at 0x12 and not at 0 to be more strict against bugs").</summary>
    public const byte EventPagefault = 0x12;
    public const byte EventFork = 0x13;
    public const byte EventRemap = 0x14;
    public const byte EventRemove = 0x15;
    public const byte EventUnmap = 0x16;

    /// <summary>uffd_msg.arg.pagefault.flags: a write fault (else a read).</summary>
    public const ulong PagefaultFlagWrite = 1UL << 0;
    /// <summary>The reason was VM_UFFD_WP (neither this nor MINOR: a missing fault).</summary>
    public const ulong PagefaultFlagWp = 1UL << 1;
    public const ulong PagefaultFlagMinor = 1UL << 2;

    public const ulong CopyModeDontWake = 1UL << 0;
    public const ulong CopyModeWp = 1UL << 1;
    public const ulong ZeropageModeDontWake = 1UL << 0;

    /// <summary>The _UFFDIO_* ioctl numbers: bit positions of the uffdio_api.ioctls and uffdio_register.ioctls masks.</summary>
    public const int IoctlRegister = 0x00, IoctlUnregister = 0x01, IoctlWake = 0x02, IoctlCopy = 0x03, IoctlZeropage = 0x04,
        IoctlMove = 0x05, IoctlWriteProtect = 0x06, IoctlContinue = 0x07, IoctlPoison = 0x08, IoctlApi = 0x3F;

    /// <summary>UFFD_API_IOCTLS: what UFFDIO_API reports as valid on the descriptor itself.</summary>
    public const ulong ApiIoctls = 1UL << IoctlRegister | 1UL << IoctlUnregister | 1UL << IoctlApi;
}

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
}

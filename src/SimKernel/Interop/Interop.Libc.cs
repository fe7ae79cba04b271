using System.Runtime.InteropServices;

namespace CriuSharp.SimKernel.Interop;

/// <summary>The host's libc: only what the simulator needs to place its own memory well.</summary>
internal static unsafe partial class Libc
{
    private const string Library = "libc";
    private const int MadvHugePage = 14;

    [LibraryImport(Library, EntryPoint = "madvise")]
    private static partial int Madvise(void* addr, nuint length, int advice);

    /// <summary>
    /// Asks the host for transparent huge pages behind a large pinned buffer. Simulated page frames
    /// are touched at random; with 4 KiB host pages nearly every simulated access would also miss
    /// the host's TLB. Best effort: where the host refuses, nothing changes but speed.
    /// </summary>
    public static void AdviseHugePages(byte[] pinnedBuffer)
    {
        if (!OperatingSystem.IsLinux())
            return;
        const ulong huge = 2UL << 20;
        fixed (byte* p = pinnedBuffer)
        {
            ulong start = ((ulong)p + huge - 1) & ~(huge - 1);
            ulong end = ((ulong)p + (ulong)pinnedBuffer.Length) & ~(huge - 1);
            if (end > start)
                _ = Madvise((void*)start, (nuint)(end - start), MadvHugePage);
        }
    }
}

using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

/// <summary>
/// Buffers whose first byte is page-aligned, on the pinned object heap, for the destination of
/// whole-page copies the kernel makes (process_vm_readv, pread of /proc/PID/mem).
/// <para>
/// The kernel copies into user memory with <c>rep movsb</c> (arch/x86/lib/copy_user_64.S), and
/// that copy is much slower when the destination is not aligned to 32 bytes: process_vm_readv of
/// 1 GiB in 1 MiB pieces took 92–98 ms into a page-aligned buffer and 260–270 ms into one at
/// offset 8 or 16, on this project's AMD EPYC test machine. A managed array's bytes start 16 bytes
/// after its header, so their alignment is wherever the GC put the array; a pinned array never
/// moves, so an aligned slice of it stays aligned.
/// </para>
/// </summary>
public static class PageAlignedBuffer
{
    /// <summary>A pinned, page-aligned slice of <paramref name="bytes"/> bytes (uninitialised).</summary>
    public static unsafe ArraySegment<byte> Allocate(int bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        const int Align = PageGeometry.PageSize;
        var array = GC.AllocateUninitializedArray<byte>(bytes + Align - 1, pinned: true);
        nint at = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array));
        int skip = (int)(-at & (Align - 1));
        return new ArraySegment<byte>(array, skip, bytes);
    }
}

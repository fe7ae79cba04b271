using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

/// <summary>
/// Buffers whose first byte is aligned to 4 KiB, on the pinned object heap, for the destination
/// of whole-page copies the kernel makes (process_vm_readv, pread of /proc/PID/mem).
/// <para>
/// The kernel copies into user memory with <c>rep movsb</c> (arch/x86/lib/copy_user_64.S), and
/// on the AMD EPYC machine this project is measured on that copy is several times slower when the
/// destination is 16 bytes past a 32-byte boundary: process_vm_readv of 1 GiB in 1 MiB pieces took
/// 125 ms into a page-aligned buffer and 470-570 ms at offset 16 on one thread, 68 ms and 233-240
/// ms on two (bench: <c>host-profile read1m</c>, <c>read1m@16</c>, <c>read1m-2threads</c>,
/// <c>read1m-2threads@16</c>; offset 32 is as fast as 0). A managed array's bytes start 16 bytes
/// past the start of the object (its type pointer and length come first), so their alignment is
/// wherever the GC put the array; a pinned array never moves, so an aligned slice of it stays
/// aligned.
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

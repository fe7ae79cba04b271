using System.Buffers.Binary;

namespace CriuSharp.KernelApi;

/// <summary>
/// One message read(2) from a userfaultfd: <c>struct uffd_msg</c> of include/uapi/linux/userfaultfd.h,
/// 32 packed bytes in host byte order.
/// <code>
///   0  u8  event         (UFFD_EVENT_PAGEFAULT = 0x12, ...)
///   1  u8  reserved1     2  u16 reserved2     4  u32 reserved3   (always zero: msg_init memsets)
///   8  u64 arg.pagefault.flags    (UFFD_PAGEFAULT_FLAG_WRITE | _WP | _MINOR)
///  16  u64 arg.pagefault.address  (page-aligned unless UFFD_FEATURE_EXACT_ADDRESS)
///  24  u32 arg.pagefault.feat.ptid (the faulting thread, with UFFD_FEATURE_THREAD_ID; else 0)
///  28  u32 (rest of the union, zero)
/// </code>
/// </summary>
public readonly record struct UffdMsg(byte Event, ulong Flags, ulong Address, uint Ptid)
{
    public const int Size = 32;

    public bool IsWrite => (Flags & UffdConstants.PagefaultFlagWrite) != 0;

    /// <summary>Neither WP nor MINOR: the page was missing.</summary>
    public bool IsMissing => Event == UffdConstants.EventPagefault
                             && (Flags & (UffdConstants.PagefaultFlagWp | UffdConstants.PagefaultFlagMinor)) == 0;

    /// <summary>Writes the 32 bytes a little-endian kernel returns from read(2).</summary>
    public void WriteTo(Span<byte> dst)
    {
        dst[..Size].Clear();
        dst[0] = Event;
        BinaryPrimitives.WriteUInt64LittleEndian(dst[8..], Flags);
        BinaryPrimitives.WriteUInt64LittleEndian(dst[16..], Address);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[24..], Ptid);
    }

    public static UffdMsg Read(ReadOnlySpan<byte> src)
    {
        if (src.Length < Size)
            throw new ArgumentException($"a uffd_msg is {Size} bytes, got {src.Length}", nameof(src));
        return new UffdMsg(src[0], BinaryPrimitives.ReadUInt64LittleEndian(src[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(src[16..]), BinaryPrimitives.ReadUInt32LittleEndian(src[24..]));
    }
}

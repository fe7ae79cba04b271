using System.Buffers.Binary;

namespace CriuSharp.KernelApi;

/// <summary>
/// One message read(2) from a userfaultfd: <c>struct uffd_msg</c> of include/uapi/linux/userfaultfd.h,
/// 32 packed bytes in host byte order. The 24 bytes after the header are a union chosen by the event:
/// <code>
///   0  u8  event         (UFFD_EVENT_PAGEFAULT = 0x12, FORK 0x13, REMAP 0x14, REMOVE 0x15, UNMAP 0x16)
///   1  u8  reserved1     2  u16 reserved2     4  u32 reserved3   (always zero: msg_init memsets)
///            PAGEFAULT               FORK         REMAP        REMOVE / UNMAP
///   8  u64   pagefault.flags         fork.ufd(u32) remap.from  remove.start
///  16  u64   pagefault.address       -            remap.to     remove.end
///  24  u32   pagefault.feat.ptid     -            remap.len    -
///  28  u32   -                       -            (u64 at 24)  -
/// </code>
/// The record keeps the three union words under their page-fault names (<see cref="Flags"/> at 8,
/// <see cref="Address"/> at 16, <see cref="Ptid"/> and <see cref="Arg3High"/> at 24); the event
/// accessors below read them under the names the uapi gives them for the other events.
/// </summary>
public readonly record struct UffdMsg(byte Event, ulong Flags, ulong Address, uint Ptid)
{
    public const int Size = 32;

    /// <summary>Bytes 28–31: the upper half of remap.len (zero for every other event).</summary>
    public uint Arg3High { get; init; }

    public bool IsWrite => (Flags & UffdConstants.PagefaultFlagWrite) != 0;

    /// <summary>Neither WP nor MINOR: the page was missing.</summary>
    public bool IsMissing => Event == UffdConstants.EventPagefault
                             && (Flags & (UffdConstants.PagefaultFlagWp | UffdConstants.PagefaultFlagMinor)) == 0;

    /// <summary>arg.remap.from (UFFD_EVENT_REMAP).</summary>
    public ulong RemapFrom => Flags;
    /// <summary>arg.remap.to (UFFD_EVENT_REMAP).</summary>
    public ulong RemapTo => Address;
    /// <summary>arg.remap.len (UFFD_EVENT_REMAP): the length of the old mapping.</summary>
    public ulong RemapLen => Ptid | (ulong)Arg3High << 32;
    /// <summary>arg.remove.start (UFFD_EVENT_REMOVE and UFFD_EVENT_UNMAP).</summary>
    public ulong RemoveStart => Flags;
    /// <summary>arg.remove.end (UFFD_EVENT_REMOVE and UFFD_EVENT_UNMAP), exclusive.</summary>
    public ulong RemoveEnd => Address;

    /// <summary>UFFD_EVENT_REMAP: mremap moved [from, from + len) to <paramref name="to"/>.</summary>
    public static UffdMsg Remap(ulong from, ulong to, ulong len) =>
        new(UffdConstants.EventRemap, from, to, (uint)len) { Arg3High = (uint)(len >> 32) };

    /// <summary>UFFD_EVENT_REMOVE: madvise(MADV_DONTNEED/MADV_FREE/MADV_REMOVE) is about to zap [start, end).</summary>
    public static UffdMsg Remove(ulong start, ulong end) => new(UffdConstants.EventRemove, start, end, 0);

    /// <summary>UFFD_EVENT_UNMAP: munmap (or a mapping that replaced it) removed [start, end).</summary>
    public static UffdMsg Unmap(ulong start, ulong end) => new(UffdConstants.EventUnmap, start, end, 0);

    /// <summary>Writes the 32 bytes a little-endian kernel returns from read(2).</summary>
    public void WriteTo(Span<byte> dst)
    {
        dst[..Size].Clear();
        dst[0] = Event;
        BinaryPrimitives.WriteUInt64LittleEndian(dst[8..], Flags);
        BinaryPrimitives.WriteUInt64LittleEndian(dst[16..], Address);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[24..], Ptid);
        BinaryPrimitives.WriteUInt32LittleEndian(dst[28..], Arg3High);
    }

    public static UffdMsg Read(ReadOnlySpan<byte> src)
    {
        if (src.Length < Size)
            throw new ArgumentException($"a uffd_msg is {Size} bytes, got {src.Length}", nameof(src));
        return new UffdMsg(src[0], BinaryPrimitives.ReadUInt64LittleEndian(src[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(src[16..]), BinaryPrimitives.ReadUInt32LittleEndian(src[24..]))
        {
            Arg3High = BinaryPrimitives.ReadUInt32LittleEndian(src[28..]),
        };
    }
}

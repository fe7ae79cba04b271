using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

/// <summary>
/// Which C layout of CRIU's <c>struct page_server_iov</c> (criu/page-xfer.c) is on the wire.
/// Nothing in the protocol says which one a peer speaks: both sides must agree beforehand.
/// <code>
///  Current (CRIU 4.2+, 32 bytes)            Pre42 (CRIU up to 4.1, 24 bytes)
///  0  u32 cmd                               0  u32 cmd
///  4  (padding: nr_pages is 8-aligned)      4  u32 nr_pages
///  8  u64 nr_pages                          8  u64 vaddr
///  16 u64 vaddr                             16 u64 dst_id
///  24 u64 dst_id
/// </code>
/// Every field is in host byte order: CRIU sends the raw struct.
/// </summary>
public enum PageServerLayout
{
    /// <summary>nr_pages widened to 64 bits (criu commit "pagemap: use unsigned long for page counts").</summary>
    Current,
    /// <summary>The 24-byte header of CRIU 4.1 and earlier (Debian's criu 3.17 speaks it).</summary>
    Pre42,
}

/// <summary>The PS_IOV_* commands of criu/page-xfer.c (low 16 bits of <c>cmd</c>).</summary>
public enum PageServerCommand : uint
{
    /// <summary>Pages of the open image follow (PE_PRESENT), from clients older than ADD_F.</summary>
    Add = 1,
    /// <summary>A hole in the parent (PE_PARENT), from clients older than ADD_F.</summary>
    Hole = 2,
    /// <summary>Open the pagemap named by dst_id, no reply (older clients).</summary>
    Open = 3,
    /// <summary>Open the pagemap named by dst_id; the server answers one byte: has a parent.</summary>
    Open2 = 4,
    /// <summary>Does the parent image set hold this pagemap? The server answers a 4-byte int.</summary>
    Parent = 5,
    /// <summary>A pagemap entry with its PE_* flags in the upper 16 bits of cmd; bytes follow when PE_PRESENT.</summary>
    AddF = 6,
    /// <summary>Lazy pages: ask the dump side's page server for pages; it answers ADD_F + bytes, or nr_pages 0.</summary>
    Get = 7,
    /// <summary>End of the session; the server answers a 4-byte status (0).</summary>
    Close = 0x1023,
    /// <summary>As CLOSE, sent when the socket may outlive the client (--ps-socket).</summary>
    ForceClose = 0x1024,
    /// <summary>criu-sharp extension: which extensions does the server take? It answers u64 bits (<see cref="PageServerDeltas"/>).</summary>
    Features = 0x5301,
    /// <summary>criu-sharp extension: nr_pages PE_DELTA pages follow (<see cref="PageServerDeltas"/>); sent only to a server whose FEATURES said so.</summary>
    AddDelta = 0x5302,
}

/// <summary>The kind of pagemap a dst_id names (PS_TYPE_*).</summary>
public enum PageServerImageType : byte
{
    Pid = 1,
    Shmem = 2,
}

/// <summary>
/// One header of CRIU's page-xfer protocol: <c>cmd = flags &lt;&lt; 16 | command</c>,
/// <c>dst_id = id &lt;&lt; 8 | type</c>.
/// </summary>
[StructLayout(LayoutKind.Auto)]
public readonly record struct PageServerIov(uint Cmd, ulong NrPages, ulong Vaddr, ulong DstId)
{
    public const int CmdBits = 16;
    public const int TypeBits = 8;
    public const int CurrentSize = 32;
    public const int Pre42Size = 24;

    public PageServerCommand Command => (PageServerCommand)(Cmd & ((1u << CmdBits) - 1));
    public PagemapFlags Flags => (PagemapFlags)(Cmd >> CmdBits);

    public static int SizeOf(PageServerLayout layout) => layout == PageServerLayout.Current ? CurrentSize : Pre42Size;

    public static uint EncodeCmd(PageServerCommand command, PagemapFlags flags = PagemapFlags.None) =>
        ((uint)flags << CmdBits) | (uint)command;

    public static ulong EncodeDst(PageServerImageType type, ulong id)
    {
        if (id > ulong.MaxValue >> TypeBits)
            throw new ArgumentOutOfRangeException(nameof(id), id, "an image id must fit in 56 bits");
        return (id << TypeBits) | (byte)type;
    }

    /// <summary>
    /// criu/page-xfer.c decode_pm: besides PS_TYPE_*, older CRIUs sent their CR_FD_* numbers as the
    /// type, which the server still accepts.
    /// </summary>
    public static bool TryDecodeDst(ulong dstId, out PageServerImageType type, out ulong id)
    {
        id = dstId >> TypeBits;
        switch (dstId & ((1u << TypeBits) - 1))
        {
            case 1 or 10 or 11 or 16 or 17:
                type = PageServerImageType.Pid;
                return true;
            case 2 or 27 or 28 or 29 or 32 or 33 or 34:
                type = PageServerImageType.Shmem;
                return true;
            default:
                type = 0;
                return false;
        }
    }

    /// <summary>Writes the header as the C struct of <paramref name="layout"/> in host byte order.</summary>
    public void Write(Span<byte> dest, PageServerLayout layout)
    {
        dest = dest[..SizeOf(layout)];
        dest.Clear();
        MemoryMarshal.Write(dest, Cmd);
        if (layout == PageServerLayout.Current)
        {
            MemoryMarshal.Write(dest[8..], NrPages);
            MemoryMarshal.Write(dest[16..], Vaddr);
            MemoryMarshal.Write(dest[24..], DstId);
        }
        else
        {
            if (NrPages > uint.MaxValue)
                throw new ArgumentOutOfRangeException(nameof(dest), NrPages, "the pre-4.2 header carries at most 2^32-1 pages");
            MemoryMarshal.Write(dest[4..], (uint)NrPages);
            MemoryMarshal.Write(dest[8..], Vaddr);
            MemoryMarshal.Write(dest[16..], DstId);
        }
    }

    public static PageServerIov Read(ReadOnlySpan<byte> src, PageServerLayout layout)
    {
        src = src[..SizeOf(layout)];
        uint cmd = MemoryMarshal.Read<uint>(src);
        return layout == PageServerLayout.Current
            ? new PageServerIov(cmd, MemoryMarshal.Read<ulong>(src[8..]), MemoryMarshal.Read<ulong>(src[16..]), MemoryMarshal.Read<ulong>(src[24..]))
            : new PageServerIov(cmd, MemoryMarshal.Read<uint>(src[4..]), MemoryMarshal.Read<ulong>(src[8..]), MemoryMarshal.Read<ulong>(src[16..]));
    }

    public static PageServerLayout ParseLayout(string text) => text switch
    {
        "current" or "4.2" or "32" => PageServerLayout.Current,
        "pre-4.2" or "legacy" or "24" => PageServerLayout.Pre42,
        _ => throw new ArgumentException($"unknown page-server header layout '{text}' (expected current or pre-4.2)", nameof(text)),
    };
}

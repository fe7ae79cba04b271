using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

/// <summary>
/// Delta pages on the page-server wire (a criu-sharp extension; CRIU's page-xfer has neither
/// deltas nor a way to ask what a server supports). Two commands of our own, numbered far from
/// CRIU's PS_IOV_* values (1..7, 0x1023, 0x1024) so that a CRIU page server, which closes the
/// connection on a command it does not know ("Unknown command" in page_server_serve), refuses
/// them instead of storing anything:
/// <code>
///  FEATURES (0x5301)  header: cmd only            answer: u64 feature bits (bit 0: ADD_DELTA)
///  ADD_DELTA (0x5302) header: nr_pages n, vaddr, dst_id (no flags), then
///     u32 encoding (1: XBZRLE, as pagemap_head.delta_encoding)
///     n × { u32 size, u64 checksum }   size 0..4096; checksum = XXH3-64 of the new page
///     Σ size bytes                     the deltas, back to back
/// </code>
/// Host byte order, as the header. A client asks FEATURES first and sends ADD_DELTA only if the
/// answer has <see cref="FeatureDelta"/>; the server records the n pages as PE_DELTA entries with
/// the same deltas-N.img and pagemap fields a local dump writes.
/// </summary>
public static class PageServerDeltas
{
    /// <summary>FEATURES' answer bit: ADD_DELTA with XBZRLE deltas is understood.</summary>
    public const ulong FeatureDelta = 1;

    /// <summary>Pages of one ADD_DELTA at most (their deltas fit 64 MiB).</summary>
    public const int MaxPages = 16384;

    /// <summary>Bytes of one page's record (u32 size, u64 checksum).</summary>
    public const int RecordBytes = 12;

    public static void WriteRecord(Span<byte> dst, uint size, ulong checksum)
    {
        MemoryMarshal.Write(dst, size);
        MemoryMarshal.Write(dst[4..], checksum);
    }

    public static (uint Size, ulong Checksum) ReadRecord(ReadOnlySpan<byte> src) =>
        (MemoryMarshal.Read<uint>(src), MemoryMarshal.Read<ulong>(src[4..]));

    /// <summary>Bytes of the encoding word that follows an ADD_DELTA header.</summary>
    public const int EncodingBytes = 4;

    public static void WriteEncoding(Span<byte> dst, DeltaEncoding encoding) => MemoryMarshal.Write(dst, (uint)encoding);

    public static uint ReadEncoding(ReadOnlySpan<byte> src) => MemoryMarshal.Read<uint>(src);

    /// <summary>The u64 feature bits that answer FEATURES.</summary>
    public static byte[] FeaturesAnswer(ulong features) => BitConverter.GetBytes(features);

    public static ulong ReadFeatures(ReadOnlySpan<byte> answer) => MemoryMarshal.Read<ulong>(answer);
}

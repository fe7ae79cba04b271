using CriuSharp.ImageFormat.Images;
using Google.Protobuf;

namespace CriuSharp.ImageFormat;

/// <summary>
/// The byte layouts of criu-sharp's sidecar state (sim-state-PID.img entries and
/// core_entry.sim_task_state), documented in protos/README.md. All integers are little-endian.
/// </summary>
public static class SimState
{
    /// <summary>Key of the entry holding the VMA checksums: 24 bytes per VMA (start, end, hash; u64 each).</summary>
    public const string VmaChecksumsKey = "vma-checksums";
    /// <summary>Key of the entry holding the dumped kernel's page size (i32).</summary>
    public const string PageSizeKey = "page-size";

    private const int ChecksumRecord = 24;

    public static sim_state_entry VmaChecksums(IReadOnlyList<(ulong Start, ulong End, ulong Hash)> checksums)
    {
        var bytes = new byte[checksums.Count * ChecksumRecord];
        for (int i = 0; i < checksums.Count; i++)
        {
            var (s, e, h) = checksums[i];
            BitConverter.TryWriteBytes(bytes.AsSpan(i * ChecksumRecord), s);
            BitConverter.TryWriteBytes(bytes.AsSpan(i * ChecksumRecord + 8), e);
            BitConverter.TryWriteBytes(bytes.AsSpan(i * ChecksumRecord + 16), h);
        }
        return new sim_state_entry { Key = VmaChecksumsKey, Data = ByteString.CopyFrom(bytes) };
    }

    /// <summary>VMA start → (end, hash) from a <see cref="VmaChecksumsKey"/> entry (a trailing partial record is ignored).</summary>
    public static Dictionary<ulong, (ulong End, ulong Hash)> ReadVmaChecksums(sim_state_entry entry)
    {
        var raw = entry.Data.Span;
        var map = new Dictionary<ulong, (ulong End, ulong Hash)>();
        for (int i = 0; i + ChecksumRecord <= raw.Length; i += ChecksumRecord)
            map[BitConverter.ToUInt64(raw[i..])] = (BitConverter.ToUInt64(raw[(i + 8)..]), BitConverter.ToUInt64(raw[(i + 16)..]));
        return map;
    }

    public static sim_state_entry PageSize(int pageSize) =>
        new() { Key = PageSizeKey, Data = ByteString.CopyFrom(BitConverter.GetBytes(pageSize)) };

    /// <summary>core_entry.sim_task_state: u32 register count, registers (u64 each), then the extra state bytes.</summary>
    public static byte[] EncodeTaskState(ulong[] regs, byte[] extra)
    {
        var b = new byte[4 + regs.Length * 8 + extra.Length];
        BitConverter.TryWriteBytes(b.AsSpan(0), regs.Length);
        for (int i = 0; i < regs.Length; i++)
            BitConverter.TryWriteBytes(b.AsSpan(4 + i * 8), regs[i]);
        extra.CopyTo(b, 4 + regs.Length * 8);
        return b;
    }

    public static (ulong[] Regs, byte[] Extra) DecodeTaskState(ReadOnlySpan<byte> b)
    {
        if (b.Length < 4)
            return ([], []);
        int n = BitConverter.ToInt32(b);
        var regs = new ulong[n];
        for (int i = 0; i < n; i++)
            regs[i] = BitConverter.ToUInt64(b.Slice(4 + i * 8));
        return (regs, b[(4 + n * 8)..].ToArray());
    }
}

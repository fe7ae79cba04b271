using CriuSharp.ImageFormat.Images;

namespace CriuSharp.ImageFormat;

/// <summary>
/// A loaded pagemap-*.img with the index a reader needs to find any page's bytes in pages-N.img
/// without reading anything before it.
/// <code>
///  entry      flags     data offset   blocks (BlockPages = 4)
///  0x1000 ×6  PRESENT   0             [b0: 1530 B][b1: 812 B, 1 zero page]
///  0x9000 ×2  PARENT    -             (in parent/pagemap-PID.img)
///  0xc000 ×4  PRESENT   2342          [b0: 4096×3 B raw, page 2 zero]
/// </code>
/// In CRIU's raw layout the offset of an entry is the sum of nr_pages*4096 of the PE_PRESENT
/// entries before it; with compression it is the sum of their block sizes.
/// </summary>
public sealed class PagemapImage
{
    private readonly long[] _dataOffset;
    private readonly int[] _firstBlock;
    private readonly long[] _blockOffset;
    private readonly long[] _deltaOffset;

    private PagemapImage(string path, pagemap_head head, pagemap_entry[] entries, long[] entryOffsets)
    {
        Path = path;
        Head = head;
        Entries = entries;
        EntryFileOffsets = entryOffsets;
        if (head.HasCompression && !Enum.IsDefined((PageCompression)head.Compression))
            throw new ImageFormatException(path, "PAGEMAP", entryOffsets[0], $"unknown compression {head.Compression} in pagemap_head");
        Compression = (PageCompression)head.Compression;
        if (Compression != PageCompression.None)
        {
            if (!head.HasBlockPages || head.BlockPages < 1 || head.BlockPages > PageGeometry.MaxBlockPages)
                throw new ImageFormatException(path, "PAGEMAP", entryOffsets[0], $"block_pages {head.BlockPages} is outside 1..{PageGeometry.MaxBlockPages}");
            if (head.HasChecksum && head.Checksum != (uint)BlockChecksum.Xxh3_64 && head.Checksum != (uint)BlockChecksum.None)
                throw new ImageFormatException(path, "PAGEMAP", entryOffsets[0], $"unknown block checksum {head.Checksum}");
            BlockPages = (int)head.BlockPages;
        }
        Checksum = (BlockChecksum)head.Checksum;

        _dataOffset = new long[entries.Length];
        _firstBlock = new int[entries.Length];
        _deltaOffset = new long[entries.Length];
        long deltaOffset = 0;
        var blockOffsets = new List<long>();
        long offset = 0;
        ulong prevEnd = 0;
        for (int i = 0; i < entries.Length; i++)
        {
            var e = entries[i];
            long at = entryOffsets[i + 1];
            ulong nr = NrPages(e);
            if ((e.Vaddr & (PageGeometry.PageSize - 1)) != 0)
                throw new ImageFormatException(path, "PAGEMAP", at, $"vaddr 0x{e.Vaddr:x} is not page aligned");
            if (e.Vaddr < prevEnd)
                throw new ImageFormatException(path, "PAGEMAP", at, $"entry at 0x{e.Vaddr:x} overlaps or precedes the previous one (ends 0x{prevEnd:x})");
            if (nr > (ulong.MaxValue - e.Vaddr) >> PageGeometry.PageShift)
                throw new ImageFormatException(path, "PAGEMAP", at, $"entry at 0x{e.Vaddr:x} with {nr} pages runs past the address space");
            prevEnd = e.Vaddr + (nr << PageGeometry.PageShift);
            _dataOffset[i] = -1;
            _firstBlock[i] = -1;
            _deltaOffset[i] = -1;
            if ((FlagsOf(e) & PagemapFlags.Delta) != 0)
            {
                if ((FlagsOf(e) & (PagemapFlags.Present | PagemapFlags.Parent)) != 0)
                    throw new ImageFormatException(path, "PAGEMAP", at, $"entry at 0x{e.Vaddr:x} is PE_DELTA together with PE_PRESENT or PE_PARENT");
                if (head.DeltaEncoding != (uint)DeltaEncoding.Xbzrle)
                    throw new ImageFormatException(path, "PAGEMAP", at, $"entry at 0x{e.Vaddr:x} is PE_DELTA but pagemap_head.delta_encoding is {head.DeltaEncoding}");
                if ((ulong)e.DeltaSizes.Count != nr || (ulong)e.DeltaChecksums.Count != nr)
                    throw new ImageFormatException(path, "PAGEMAP", at, $"PE_DELTA entry at 0x{e.Vaddr:x} has {nr} pages but {e.DeltaSizes.Count} delta sizes and {e.DeltaChecksums.Count} checksums");
                _deltaOffset[i] = deltaOffset;
                foreach (var size in e.DeltaSizes)
                {
                    // A delta longer than two pages cannot pay (the page itself is one); anything
                    // larger is damage, refused before a reader sizes a buffer from it.
                    if (size > 2 * PageGeometry.PageSize)
                        throw new ImageFormatException(path, "PAGEMAP", at, $"PE_DELTA entry at 0x{e.Vaddr:x} has a delta of {size} bytes (at most {2 * PageGeometry.PageSize})");
                    deltaOffset += size;
                }
                continue;
            }
            if ((FlagsOf(e) & PagemapFlags.Present) == 0)
                continue;
            _dataOffset[i] = offset;
            if (Compression == PageCompression.None)
            {
                offset += (long)(nr << PageGeometry.PageShift);
                continue;
            }
            offset += IndexBlocks(e, nr, at, blockOffsets, offset);
            _firstBlock[i] = blockOffsets.Count - e.BlockSizes.Count;
        }
        _blockOffset = blockOffsets.ToArray();
        PagesLength = offset;
        DeltasLength = deltaOffset;
        DeltasStoredLength = deltaOffset;
        _deltaBlockOffset = [];
        if (head.DeltaBlockSizes.Count > 0)
        {
            if (Compression == PageCompression.None)
                throw new ImageFormatException(path, "PAGEMAP", entryOffsets[0], "pagemap_head has delta_block_sizes but the image is not compressed");
            int blockBytes = DeltaBlockBytes;
            long blocks = (deltaOffset + blockBytes - 1) / blockBytes;
            if (head.DeltaBlockSizes.Count != blocks)
                throw new ImageFormatException(path, "PAGEMAP", entryOffsets[0],
                    $"pagemap_head has {head.DeltaBlockSizes.Count} delta block sizes but its {deltaOffset} delta bytes make {blocks} blocks of {blockBytes}");
            _deltaBlockOffset = new long[blocks + 1];
            for (int b = 0; b < blocks; b++)
            {
                uint size = head.DeltaBlockSizes[b];
                long plain = Math.Min(blockBytes, deltaOffset - (long)b * blockBytes);
                if (size == 0 || size > plain)
                    throw new ImageFormatException(path, "PAGEMAP", entryOffsets[0], $"delta block {b} stores {size} bytes (1..{plain} for its {plain} delta bytes)");
                _deltaBlockOffset[b + 1] = _deltaBlockOffset[b] + size;
            }
            DeltasStoredLength = _deltaBlockOffset[blocks];
        }
    }

    private readonly long[] _deltaBlockOffset;

    /// <summary>Encoded delta bytes per block of deltas-N.img (the pages' block size).</summary>
    public int DeltaBlockBytes => BlockPages * PageGeometry.PageSize;

    /// <summary>deltas-N.img is compressed in blocks (pagemap_head.delta_block_sizes).</summary>
    public bool DeltasBlocked => _deltaBlockOffset.Length > 0;

    /// <summary>Where block <paramref name="block"/> of a blocked deltas-N.img starts, and what it stores.</summary>
    internal (long Offset, int Stored, int Plain) DeltaBlock(int block) =>
        (_deltaBlockOffset[block], (int)(_deltaBlockOffset[block + 1] - _deltaBlockOffset[block]),
            (int)Math.Min(DeltaBlockBytes, DeltasLength - (long)block * DeltaBlockBytes));

    public string Path { get; }
    public pagemap_head Head { get; }
    public IReadOnlyList<pagemap_entry> Entries { get; }
    /// <summary>Byte offset of each entry's size prefix in the pagemap file; [0] is the head.</summary>
    public IReadOnlyList<long> EntryFileOffsets { get; }
    public PageCompression Compression { get; }
    public int BlockPages { get; } = 1;
    public BlockChecksum Checksum { get; }
    /// <summary>Bytes the pages file must hold at least.</summary>
    public long PagesLength { get; }
    public uint PagesId => Head.PagesId;
    public string PagesFileName => ImageNames.Pages(Head.PagesId);
    /// <summary>Encoded bytes of every PE_DELTA page's delta (0: the pagemap has no PE_DELTA entries).</summary>
    public long DeltasLength { get; }
    /// <summary>Bytes deltas-N.img must hold: <see cref="DeltasLength"/>, or the sum of its compressed blocks.</summary>
    public long DeltasStoredLength { get; }
    public string DeltasFileName => ImageNames.Deltas(Head.PagesId);

    /// <summary>Offset in deltas-N.img of page <paramref name="page"/> of PE_DELTA entry <paramref name="entry"/>.</summary>
    internal long DeltaOffset(int entry, int page)
    {
        long off = _deltaOffset[entry];
        var sizes = Entries[entry].DeltaSizes;
        for (int p = 0; p < page; p++)
            off += sizes[p];
        return off;
    }

    public static PagemapImage Load(string path)
    {
        var contents = ImageFile.Read(path, ImageKind.Pagemap);
        return FromContents(contents);
    }

    public static PagemapImage FromContents(ImageContents contents)
    {
        var head = (pagemap_head)contents.Entries[0];
        var entries = new pagemap_entry[contents.Entries.Count - 1];
        for (int i = 0; i < entries.Length; i++)
            entries[i] = (pagemap_entry)contents.Entries[i + 1];
        return new PagemapImage(contents.Path, head, entries, contents.Offsets.ToArray());
    }

    /// <summary>
    /// A stand-in parent that covers every address with PE_PARENT: what a dump knows of its parent
    /// when the parent images live on a page server that only answered "has a parent"
    /// (criu/page-xfer.c sets xfer->parent to a dummy for the same reason).
    /// </summary>
    public static PagemapImage AllInParent(string description)
    {
        var entry = new pagemap_entry { Vaddr = 0, NrPages64 = ulong.MaxValue >> PageGeometry.PageShift, Flags = (uint)PagemapFlags.Parent };
        return new PagemapImage(description, new pagemap_head { PagesId = 0 }, [entry], [0, 0]);
    }

    /// <summary>
    /// A pagemap of coverage only, each range (ascending, non-overlapping, 4 KiB pages) as a
    /// PE_PARENT entry: what a page server holds for a pagemap, as the dump that sent it saw it.
    /// </summary>
    public static PagemapImage Coverage(string description, IReadOnlyList<(ulong Va, ulong Pages)> ranges)
    {
        var entries = new pagemap_entry[ranges.Count];
        for (int i = 0; i < entries.Length; i++)
            entries[i] = new pagemap_entry { Vaddr = ranges[i].Va, NrPages64 = ranges[i].Pages, Flags = (uint)PagemapFlags.Parent };
        return new PagemapImage(description, new pagemap_head { PagesId = 0 }, entries, new long[entries.Length + 1]);
    }

    /// <summary>CRIU's reader shim: in_parent means PE_PARENT; an absent flags field means PE_PRESENT.</summary>
    public static PagemapFlags FlagsOf(pagemap_entry e) =>
        e.InParent ? PagemapFlags.Parent : e.HasFlags ? (PagemapFlags)e.Flags : PagemapFlags.Present;

    /// <summary>Field 5 (64-bit, CRIU 4.2+) when present, else field 2.</summary>
    public static ulong NrPages(pagemap_entry e) => e.HasNrPages64 ? e.NrPages64 : e.NrPages;

    /// <summary>Index of the entry that covers <paramref name="vaddr"/>, or -1.</summary>
    public int FindEntry(ulong vaddr)
    {
        var entries = (pagemap_entry[])Entries;
        int lo = 0, hi = entries.Length - 1, found = -1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (entries[mid].Vaddr <= vaddr)
            {
                found = mid;
                lo = mid + 1;
            }
            else
            {
                hi = mid - 1;
            }
        }
        if (found < 0)
            return -1;
        var e = entries[found];
        return vaddr - e.Vaddr < NrPages(e) << PageGeometry.PageShift ? found : -1;
    }

    /// <summary>First entry whose range ends above <paramref name="vaddr"/>, or Entries.Count.</summary>
    public int FirstEntryEndingAfter(ulong vaddr)
    {
        var entries = (pagemap_entry[])Entries;
        int lo = 0, hi = entries.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            var e = entries[mid];
            if (e.Vaddr + (NrPages(e) << PageGeometry.PageShift) <= vaddr)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo;
    }

    internal long DataOffset(int entry) => _dataOffset[entry];
    internal long BlockOffset(int entry, int block) => _blockOffset[_firstBlock[entry] + block];

    /// <summary>Stored bytes of one PE_PRESENT entry (sum of its block sizes, or nr_pages*4096 when raw).</summary>
    public long StoredBytes(int entry)
    {
        var e = Entries[entry];
        if (_dataOffset[entry] < 0)
            return 0;
        if (Compression == PageCompression.None)
            return (long)(NrPages(e) << PageGeometry.PageShift);
        long sum = 0;
        foreach (var s in e.BlockSizes)
            sum += s;
        return sum;
    }

    /// <summary>Pages of a PE_PRESENT entry left out of the pages file because they are all zero.</summary>
    public static int ZeroPageCount(pagemap_entry e)
    {
        int n = 0;
        foreach (byte b in e.ZeroPages)
            n += System.Numerics.BitOperations.PopCount(b);
        return n;
    }

    internal static bool IsZeroPage(pagemap_entry e, int page)
    {
        var z = e.ZeroPages;
        int i = page >> 3;
        return i < z.Length && (z[i] & (1 << (page & 7))) != 0;
    }

    internal static bool IsRawBlock(pagemap_entry e, int block)
    {
        var r = e.RawBlocks;
        int i = block >> 3;
        return i < r.Length && (r[i] & (1 << (block & 7))) != 0;
    }

    private long IndexBlocks(pagemap_entry e, ulong nr, long at, List<long> blockOffsets, long offset)
    {
        ulong blocks = (nr + (ulong)BlockPages - 1) / (ulong)BlockPages;
        if ((ulong)e.BlockSizes.Count != blocks)
            throw new ImageFormatException(Path, "PAGEMAP", at, $"entry at 0x{e.Vaddr:x} has {e.BlockSizes.Count} block sizes, expected {blocks} for {nr} pages");
        if (Checksum == BlockChecksum.Xxh3_64 && (ulong)e.BlockChecksums.Count != blocks)
            throw new ImageFormatException(Path, "PAGEMAP", at, $"entry at 0x{e.Vaddr:x} has {e.BlockChecksums.Count} block checksums, expected {blocks}");
        if (e.HasZeroPages && (ulong)e.ZeroPages.Length != (nr + 7) >> 3)
            throw new ImageFormatException(Path, "PAGEMAP", at, $"entry at 0x{e.Vaddr:x}: zero_pages bitmap of {e.ZeroPages.Length} bytes does not fit {nr} pages");
        long start = offset;
        int bp = BlockPages;
        int maxBound = BlockCodec.MaxCompressedSize(Compression, bp * PageGeometry.PageSize);
        for (int b = 0; b < (int)blocks; b++)
        {
            int first = b * bp;
            int count = (int)Math.Min((ulong)bp, nr - (ulong)first);
            int nonZero = 0;
            for (int i = 0; i < count; i++)
                if (!IsZeroPage(e, first + i))
                    nonZero++;
            uint size = e.BlockSizes[b];
            int rawLen = nonZero * PageGeometry.PageSize;
            bool ok = nonZero == 0 ? size == 0
                : IsRawBlock(e, b) ? size == (uint)rawLen
                : size > 0 && size <= (uint)maxBound;
            if (!ok)
                throw new ImageFormatException(Path, "PAGEMAP", at,
                    $"entry at 0x{e.Vaddr:x}: block {b} claims {size} stored bytes for {nonZero} non-zero page(s)");
            blockOffsets.Add(offset);
            offset += size;
        }
        return offset - start;
    }
}

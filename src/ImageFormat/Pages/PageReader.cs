using CriuSharp.ImageFormat.Images;

namespace CriuSharp.ImageFormat;

/// <summary>Where the bytes of one page come from at the top of a chain.</summary>
public enum PageLocation
{
    /// <summary>No entry covers the page (CRIU leaves such pages zero on restore).</summary>
    Absent,
    /// <summary>Stored in this image's pages file.</summary>
    Present,
    /// <summary>PE_PRESENT, but all zero and therefore not stored (compressed images only).</summary>
    Zero,
    /// <summary>A PE_PARENT hole: the bytes are somewhere down the parent chain.</summary>
    Parent,
    /// <summary>PE_LAZY without PE_PRESENT: left for lazy transfer, no bytes in any image.</summary>
    Lazy,
    /// <summary>PE_DELTA: a delta in deltas-N.img against the page further down the chain.</summary>
    Delta,
}

/// <summary>Counters of a reader (this level and its parents).</summary>
public sealed class PageReadStats
{
    public ulong PagesRead { get; internal set; }
    public ulong ZeroPagesFilled { get; internal set; }
    public ulong PagesFromParent { get; internal set; }
    public ulong BytesRead { get; internal set; }
    public ulong BlocksDecompressed { get; internal set; }
    /// <summary>Pages rebuilt from a delta and their parent's version.</summary>
    public ulong DeltasApplied { get; internal set; }
}

/// <summary>
/// Reads page contents of one pagemap, following PE_PARENT holes into the parent image sets as
/// CRIU's restore does (pagemap.c): the entry that covers an address is found by binary search,
/// only the block that holds the page is read and checked, and the last decompressed block is
/// kept so that reading a run page by page decompresses each block once.
/// </summary>
public sealed class PageReader : IDisposable
{
    private readonly PagesSource? _pages;
    private readonly PagesSource? _deltas;
    private byte[]? _deltaBuf;
    private readonly Func<PageReader?>? _openParent;
    private readonly BlockCodec? _codec;
    private readonly byte[] _stored;
    private readonly byte[] _plain;
    private PageReader? _parent;
    private bool _parentOpened;
    private int _cachedEntry = -1;
    private int _cachedBlock = -1;

    /// <param name="pagemap">The pagemap.</param>
    /// <param name="pages">Its pages file; null only if the pagemap has no PE_PRESENT entries.</param>
    /// <param name="openParent">Opens the same pagemap one level down the chain, or returns null if there is none.</param>
    /// <param name="deltas">Its deltas-N.img; needed only if the pagemap has PE_DELTA entries.</param>
    public PageReader(PagemapImage pagemap, PagesSource? pages, Func<PageReader?>? openParent = null, PagesSource? deltas = null)
    {
        Pagemap = pagemap;
        _pages = pages;
        _deltas = deltas;
        if (pagemap.DeltasStoredLength > 0 && (deltas is null || deltas.Length < pagemap.DeltasStoredLength))
            throw new ImageFormatException(deltas?.Name ?? pagemap.DeltasFileName, "deltas", deltas?.Length ?? 0,
                $"{pagemap.Path} places deltas up to offset {pagemap.DeltasStoredLength} but the deltas file holds {deltas?.Length ?? 0} bytes");
        _openParent = openParent;
        if (pages is not null && pages.Length < pagemap.PagesLength)
            throw new ImageFormatException(pages.Name, "pages", pages.Length,
                $"file is {pages.Length} bytes but {pagemap.Path} places data up to offset {pagemap.PagesLength}");
        if (pages is null && pagemap.PagesLength > 0)
            throw new ArgumentNullException(nameof(pages), "the pagemap has stored pages but no pages file was given");
        if (pagemap.Compression != PageCompression.None)
        {
            int blockBytes = pagemap.BlockPages * PageGeometry.PageSize;
            _codec = new BlockCodec(pagemap.Compression, 0);
            _stored = new byte[BlockCodec.MaxCompressedSize(pagemap.Compression, blockBytes)];
            _plain = new byte[blockBytes];
        }
        else
        {
            _stored = [];
            _plain = [];
        }
    }

    public PagemapImage Pagemap { get; }
    public PageReadStats Stats { get; } = new();

    /// <summary>The same pagemap in the parent image set, or null.</summary>
    public PageReader? Parent
    {
        get
        {
            if (!_parentOpened)
            {
                _parent = _openParent?.Invoke();
                _parentOpened = true;
            }
            return _parent;
        }
    }

    public PageLocation Locate(ulong vaddr)
    {
        int i = Pagemap.FindEntry(vaddr & ~(ulong)(PageGeometry.PageSize - 1));
        if (i < 0)
            return PageLocation.Absent;
        var e = Pagemap.Entries[i];
        var flags = PagemapImage.FlagsOf(e);
        if ((flags & PagemapFlags.Present) != 0)
        {
            int page = (int)((vaddr - e.Vaddr) >> PageGeometry.PageShift);
            return PagemapImage.IsZeroPage(e, page) ? PageLocation.Zero : PageLocation.Present;
        }
        if ((flags & PagemapFlags.Parent) != 0)
            return PageLocation.Parent;
        if ((flags & PagemapFlags.Delta) != 0)
            return PageLocation.Delta;
        return (flags & PagemapFlags.Lazy) != 0 ? PageLocation.Lazy : PageLocation.Absent;
    }

    /// <summary>Reads <paramref name="destination"/>.Length bytes (whole pages) starting at page-aligned <paramref name="vaddr"/>.</summary>
    public void Read(ulong vaddr, Span<byte> destination)
    {
        if ((vaddr & (PageGeometry.PageSize - 1)) != 0 || (destination.Length & (PageGeometry.PageSize - 1)) != 0)
            throw new ArgumentException("reads are whole, page-aligned pages");
        int off = 0;
        while (off < destination.Length)
        {
            int done = TryReadWholeBlock(vaddr + (ulong)off, destination.Slice(off));
            if (done > 0)
            {
                off += done;
                continue;
            }
            ReadPage(vaddr + (ulong)off, destination.Slice(off, PageGeometry.PageSize));
            off += PageGeometry.PageSize;
        }
    }

    /// <summary>
    /// Sequential reads (restore fills whole VMAs) decompress a block straight into the caller's
    /// buffer when the buffer covers the whole block and no page of it is a skipped zero page;
    /// returns the bytes produced, or 0 to fall back to the page-by-page path.
    /// </summary>
    private int TryReadWholeBlock(ulong vaddr, Span<byte> destination)
    {
        if (_codec is null)
            return 0;
        int i = Pagemap.FindEntry(vaddr);
        if (i < 0)
            return 0;
        var e = Pagemap.Entries[i];
        if ((PagemapImage.FlagsOf(e) & PagemapFlags.Present) == 0)
            return 0;
        int bp = Pagemap.BlockPages;
        int page = (int)((vaddr - e.Vaddr) >> PageGeometry.PageShift);
        if (page % bp != 0)
            return 0;
        int count = (int)Math.Min((ulong)bp, PagemapImage.NrPages(e) - (ulong)page);
        int bytes = count << PageGeometry.PageShift;
        if (destination.Length < bytes || (_cachedEntry == i && _cachedBlock == page / bp))
            return 0;
        int zeros = 0;
        for (int p = page; p < page + count; p++)
            if (PagemapImage.IsZeroPage(e, p))
                zeros++;
        if (zeros == count)
            return 0;
        if (zeros == 0)
        {
            LoadBlock(i, e, page / bp, page, bp, destination.Slice(0, bytes));
            Stats.PagesRead += (ulong)count;
            return bytes;
        }
        // Some pages were left out as zero: decompress the others into the block cache (as the
        // page-by-page path would) and lay the block out in one pass.
        _cachedEntry = -1;
        LoadBlock(i, e, page / bp, page, bp, _plain);
        _cachedEntry = i;
        _cachedBlock = page / bp;
        int rank = 0;
        for (int p = 0; p < count; p++)
        {
            var dst = destination.Slice(p << PageGeometry.PageShift, PageGeometry.PageSize);
            if (PagemapImage.IsZeroPage(e, page + p))
                dst.Clear();
            else
                _plain.AsSpan((rank++) << PageGeometry.PageShift, PageGeometry.PageSize).CopyTo(dst);
        }
        Stats.PagesRead += (ulong)count;
        Stats.ZeroPagesFilled += (ulong)zeros;
        return bytes;
    }

    /// <summary>Reads one 4 KiB page; throws <see cref="MissingPagesException"/> if no image in the chain holds it.</summary>
    public void ReadPage(ulong vaddr, Span<byte> destination)
    {
        if (destination.Length < PageGeometry.PageSize)
            throw new ArgumentException("destination is smaller than a page", nameof(destination));
        destination = destination.Slice(0, PageGeometry.PageSize);
        vaddr &= ~(ulong)(PageGeometry.PageSize - 1);
        int i = Pagemap.FindEntry(vaddr);
        if (i < 0)
            throw Missing(vaddr, "no pagemap entry covers them");
        var e = Pagemap.Entries[i];
        var flags = PagemapImage.FlagsOf(e);
        if ((flags & PagemapFlags.Present) != 0)
        {
            ReadLocal(i, e, (int)((vaddr - e.Vaddr) >> PageGeometry.PageShift), destination);
            Stats.PagesRead++;
            return;
        }
        if ((flags & PagemapFlags.Parent) != 0)
        {
            var parent = Parent ?? throw Missing(vaddr, "they are PE_PARENT holes but there is no parent image set with this pagemap");
            try
            {
                parent.ReadPage(vaddr, destination);
            }
            catch (MissingPagesException inner)
            {
                throw new MissingPagesException(Pagemap.Path, inner.Start, inner.End,
                    $"PE_PARENT hole not found in the parent chain ({inner.Problem})");
            }
            Stats.PagesFromParent++;
            Stats.PagesRead++;
            return;
        }
        if ((flags & PagemapFlags.Delta) != 0)
        {
            ReadDelta(i, e, vaddr, destination);
            Stats.PagesRead++;
            return;
        }
        throw Missing(vaddr, "they are lazy (PE_LAZY without PE_PRESENT) and held by no image");
    }

    /// <summary>
    /// A PE_DELTA page: the parent chain's version of the page, patched with this image's delta,
    /// then checked against the checksum stored with the delta. A missing base and a mismatch
    /// both name the page's range; neither ever yields a page.
    /// </summary>
    private void ReadDelta(int entryIndex, pagemap_entry e, ulong vaddr, Span<byte> destination)
    {
        int page = (int)((vaddr - e.Vaddr) >> PageGeometry.PageShift);
        var parent = Parent ?? throw Missing(vaddr, "they are PE_DELTA pages but there is no parent image set with this pagemap (missing delta base)");
        try
        {
            parent.ReadPage(vaddr, destination);
        }
        catch (MissingPagesException inner)
        {
            throw new MissingPagesException(Pagemap.Path, vaddr, vaddr + PageGeometry.PageSize,
                $"the base of a PE_DELTA page is not in the parent chain ({inner.Problem})");
        }
        int size = (int)e.DeltaSizes[page];
        long off = Pagemap.DeltaOffset(entryIndex, page);
        if (_deltaBuf is null || _deltaBuf.Length < size)
            _deltaBuf = new byte[Math.Max(size, 2 * PageGeometry.PageSize)];
        var delta = _deltaBuf.AsSpan(0, size);
        // An empty delta (the page was written with the bytes its base holds, and elision was
        // off) has nothing in the deltas file, which may then not exist at all.
        if (size > 0 && Pagemap.DeltasBlocked)
            ReadBlockedDelta(off, delta);
        else if (size > 0)
        {
            _deltas!.ReadAt(off, delta);
            Stats.BytesRead += (ulong)size;
        }
        var problem = PageDelta.TryApply(delta, destination);
        if (problem is not null)
            throw new ImageFormatException(_deltas?.Name ?? Pagemap.DeltasFileName, "deltas", off,
                $"delta of page 0x{vaddr:x}-0x{vaddr + PageGeometry.PageSize:x} is malformed: {problem}");
        ulong expected = e.DeltaChecksums[page];
        ulong actual = PageDelta.Checksum(destination);
        if (actual != expected)
            throw new ImageFormatException(_deltas?.Name ?? Pagemap.DeltasFileName, "deltas", off,
                $"checksum mismatch for the delta page 0x{vaddr:x}-0x{vaddr + PageGeometry.PageSize:x} (stored 0x{expected:x16}, computed 0x{actual:x16}): wrong base in the parent chain or a damaged delta");
        Stats.DeltasApplied++;
    }

    private byte[]? _deltaStored;
    private byte[]? _deltaPlain;
    private int _deltaCachedBlock = -1;

    /// <summary>
    /// Bytes [<paramref name="off"/>, + destination.Length) of the delta stream of a deltas-N.img
    /// compressed in blocks: the blocks they span are decompressed, the last one kept (restore
    /// reads deltas in order, so each block is decompressed once).
    /// </summary>
    private void ReadBlockedDelta(long off, Span<byte> destination)
    {
        int blockBytes = Pagemap.DeltaBlockBytes;
        while (!destination.IsEmpty)
        {
            int block = (int)(off / blockBytes), at = (int)(off % blockBytes);
            var (offset, stored, plain) = Pagemap.DeltaBlock(block);
            if (_deltaCachedBlock != block)
            {
                _deltaPlain ??= new byte[blockBytes];
                _deltaStored ??= new byte[blockBytes];
                _deltaCachedBlock = -1;
                var dst = _deltaPlain.AsSpan(0, plain);
                if (stored == plain)
                    _deltas!.ReadAt(offset, dst);
                else
                {
                    var src = _deltaStored.AsSpan(0, stored);
                    _deltas!.ReadAt(offset, src);
                    var problem = _codec!.TryDecompress(src, dst);
                    if (problem is not null)
                        throw new ImageFormatException(_deltas.Name, "deltas", offset, $"delta block {block}: {problem}");
                }
                Stats.BytesRead += (ulong)stored;
                _deltaCachedBlock = block;
            }
            int take = Math.Min(destination.Length, plain - at);
            _deltaPlain!.AsSpan(at, take).CopyTo(destination);
            destination = destination[take..];
            off += take;
        }
    }

    /// <summary>
    /// What the chain's version of the page cost where it is stored: its share of its compressed
    /// block (the block's stored bytes split evenly over the block's non-zero pages), 0 for a zero
    /// page, 4096 in a raw pages file; a PE_PARENT or PE_DELTA page is costed where its base is
    /// stored (what a delta replaced is not recorded). -1 where no image of the chain holds it.
    /// Reads only pagemaps, never pages.
    /// </summary>
    public int StoredShare(ulong vaddr)
    {
        vaddr &= ~(ulong)(PageGeometry.PageSize - 1);
        int i = Pagemap.FindEntry(vaddr);
        if (i < 0)
            return -1;
        var e = Pagemap.Entries[i];
        var flags = PagemapImage.FlagsOf(e);
        if ((flags & PagemapFlags.Present) == 0)
            return (flags & (PagemapFlags.Parent | PagemapFlags.Delta)) != 0 && Parent is { } parent ? parent.StoredShare(vaddr) : -1;
        int page = (int)((vaddr - e.Vaddr) >> PageGeometry.PageShift);
        if (_codec is null)
            return PageGeometry.PageSize;
        if (PagemapImage.IsZeroPage(e, page))
            return 0;
        int bp = Pagemap.BlockPages;
        int block = page / bp, first = block * bp;
        int count = (int)Math.Min((ulong)bp, PagemapImage.NrPages(e) - (ulong)first), nonZero = 0;
        for (int p = first; p < first + count; p++)
            if (!PagemapImage.IsZeroPage(e, p))
                nonZero++;
        int size = block < e.BlockSizes.Count ? (int)e.BlockSizes[block] : 0;
        return nonZero == 0 ? 0 : (size + nonZero - 1) / nonZero;
    }

    private MissingPagesException Missing(ulong vaddr, string why) =>
        new(Pagemap.Path, vaddr, vaddr + PageGeometry.PageSize, why);

    private void ReadLocal(int entryIndex, pagemap_entry e, int page, Span<byte> destination)
    {
        var pages = _pages!;
        if (_codec is null)
        {
            long off = Pagemap.DataOffset(entryIndex) + ((long)page << PageGeometry.PageShift);
            pages.ReadAt(off, destination);
            Stats.BytesRead += PageGeometry.PageSize;
            return;
        }
        if (PagemapImage.IsZeroPage(e, page))
        {
            destination.Clear();
            Stats.ZeroPagesFilled++;
            return;
        }
        int bp = Pagemap.BlockPages;
        int block = page / bp;
        int first = block * bp;
        int rank = 0;
        for (int p = first; p < page; p++)
            if (!PagemapImage.IsZeroPage(e, p))
                rank++;
        if (_cachedEntry != entryIndex || _cachedBlock != block)
        {
            _cachedEntry = -1;
            LoadBlock(entryIndex, e, block, first, bp, _plain);
            _cachedEntry = entryIndex;
            _cachedBlock = block;
        }
        _plain.AsSpan(rank << PageGeometry.PageShift, PageGeometry.PageSize).CopyTo(destination);
    }

    private void LoadBlock(int entryIndex, pagemap_entry e, int block, int first, int bp, Span<byte> target)
    {
        ulong nr = PagemapImage.NrPages(e);
        int count = (int)Math.Min((ulong)bp, nr - (ulong)first);
        int nonZero = 0;
        for (int p = first; p < first + count; p++)
            if (!PagemapImage.IsZeroPage(e, p))
                nonZero++;
        int size = (int)e.BlockSizes[block];
        long off = Pagemap.BlockOffset(entryIndex, block);
        var stored = _stored.AsSpan(0, size);
        _pages!.ReadAt(off, stored);
        Stats.BytesRead += (ulong)size;
        if (Pagemap.Checksum == BlockChecksum.Xxh3_64)
        {
            ulong expected = e.BlockChecksums[block];
            ulong actual = BlockCodec.Checksum(stored);
            if (actual != expected)
                throw new ImageFormatException(_pages.Name, "pages", off,
                    $"checksum mismatch in block {block} of the entry at 0x{e.Vaddr:x} (stored 0x{expected:x16}, computed 0x{actual:x16})");
        }
        var plain = target.Slice(0, nonZero << PageGeometry.PageShift);
        if (PagemapImage.IsRawBlock(e, block))
        {
            stored.CopyTo(plain);
            return;
        }
        var problem = _codec!.TryDecompress(stored, plain);
        if (problem is not null)
            throw new ImageFormatException(_pages.Name, "pages", off, $"block {block} of the entry at 0x{e.Vaddr:x}: {problem}");
        Stats.BlocksDecompressed++;
    }

    public void Dispose()
    {
        _codec?.Dispose();
        _pages?.Dispose();
        _deltas?.Dispose();
        _parent?.Dispose();
    }
}

using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper.PageServer;

/// <summary>A protocol violation by the peer: the connection is closed with this one line.</summary>
internal sealed class PageServerProtocolException(string message) : Exception(message);

/// <summary>
/// One connection to the page server (criu/page-xfer.c page_server_serve): reads headers, writes
/// what they describe into the images directory through a <see cref="PagemapWriter"/> (the
/// server's "local xfer"), answers OPEN2, PARENT and CLOSE.
/// <code>
///  header ─▶ OPEN/OPEN2 ─▶ finish the open pagemap, begin pagemap-ID.img (+ u8 has_parent for OPEN2)
///         ─▶ PARENT     ─▶ int: parent/pagemap-ID.img exists
///         ─▶ ADD_F/ADD/HOLE (implicit open when dst_id differs, as older clients expect)
///               PE_PRESENT: n*4096 bytes follow ─▶ pages-N.img     PE_PARENT: must lie in the parent
///         ─▶ CLOSE/FORCE_CLOSE ─▶ finish, commit the directory, int32 0; nothing is read after it
///         ─▶ anything else, a short header, a bad id, flags, size or order ─▶ connection closed
/// </code>
/// Bounds: an entry holds 1..2^32-1 pages (a pagemap entry's limit); at most 64 MiB of one entry
/// is held in memory at a time, allocated as its bytes arrive; image names come only from numeric
/// ids, so nothing is written outside the images directory.
/// </summary>
internal sealed class PageServerSession(PageServerOptions o, Stream s)
{
    private const int MaxHeldBytes = 64 << 20;
    private const int ReadChunk = 1 << 20;
    private readonly HashSet<ulong> _done = [];
    private ImageDirectory? _dir;
    private PagemapWriter? _w;
    private ulong _cur = ulong.MaxValue;
    private PageServerImageType _curType;
    private ulong _curId;
    private ulong _nextFree;
    private PagemapImage? _parentPm;
    private byte[] _buf = [];
    private PageServerBlocks.Decoder? _decoder;
    private int _pagemaps;
    private ulong _pagesWritten;
    private ulong _pagesParent;
    private long _bytes;

    /// <summary>Refuses, before listening, an images directory that holds foreign files or a parent that does not exist.</summary>
    public static void CheckImagesDir(PageServerOptions o)
    {
        if (Directory.Exists(o.ImagesDir))
            Checkpointer.PrepareImagesDir(o.ImagesDir, null, checkOnly: true);
        if (o.PrevImagesDir is { } prev)
        {
            string p = Path.IsPathRooted(prev) ? prev : Path.Combine(o.ImagesDir, prev);
            if (!Directory.Exists(p))
                throw new DumperException($"parent images directory '{prev}' does not exist (--prev-images-dir is relative to the images directory)", null, o.ImagesDir);
        }
    }

    public PageServerSessionResult Run(string peer)
    {
        bool closed = false;
        string? error = null;
        try
        {
            closed = Serve();
            if (!closed)
                error = "the connection ended before CLOSE: the data were not flushed";
        }
        catch (PageServerProtocolException e)
        {
            error = e.Message;
        }
        catch (EndOfStreamException)
        {
            error = "the connection ended in the middle of a message";
        }
        catch (IOException e)
        {
            error = $"I/O error: {(e.InnerException ?? e).Message}";
        }
        catch (DumperException e)
        {
            error = e.Message;
        }
        catch (ImageFormatException e)
        {
            error = e.Message;
        }
        finally
        {
            _decoder?.Dispose();
            if (!closed)
            {
                // The directory keeps its incomplete marker; pages written so far are dropped.
                _w?.Dispose();
                _dir?.Dispose();
            }
        }
        return new PageServerSessionResult(peer, closed, error, _pagemaps, _pagesWritten, _pagesParent, _bytes);
    }

    private bool Serve()
    {
        int size = PageServerIov.SizeOf(o.Layout);
        var hdr = new byte[size];
        while (true)
        {
            int got = ReadSome(hdr);
            if (got == 0)
                return false;
            if (got < size)
                throw new PageServerProtocolException($"truncated header: {got} of {size} bytes ({(o.Layout == PageServerLayout.Current ? "current" : "pre-4.2")} layout)");
            var iov = PageServerIov.Read(hdr, o.Layout);
            CrashPoints.Hit("ps.recv");
            switch (iov.Command)
            {
                case PageServerCommand.Open:
                    RequireNoFlags(iov);
                    Open(iov.DstId);
                    break;
                case PageServerCommand.Open2:
                    RequireNoFlags(iov);
                    bool hasParent = Open(iov.DstId);
                    Reply([hasParent ? (byte)1 : (byte)0]);
                    break;
                case PageServerCommand.Parent:
                    RequireNoFlags(iov);
                    var (t, id) = Decode(iov.DstId);
                    Reply(BitConverter.GetBytes(HasParentImage(t, id) ? 1 : 0));
                    break;
                case PageServerCommand.AddF:
                    Add(iov, iov.Flags);
                    break;
                case PageServerCommand.Add:
                    RequireNoFlags(iov);
                    Add(iov, PagemapFlags.Present);
                    break;
                case PageServerCommand.Hole:
                    RequireNoFlags(iov);
                    Add(iov, PagemapFlags.Parent);
                    break;
                case PageServerCommand.Close:
                case PageServerCommand.ForceClose:
                    RequireNoFlags(iov);
                    Commit();
                    Reply(BitConverter.GetBytes(0));
                    return true;
                case PageServerCommand.Get:
                    throw new PageServerProtocolException("GET asks a dump-side page server for lazy pages; this one receives pages");
                case PageServerCommand.Features when o.Extensions:
                    RequireNoFlags(iov);
                    Reply(PageServerDeltas.FeaturesAnswer(PageServerDeltas.FeatureDelta));
                    break;
                case PageServerCommand.AddDelta when o.Extensions:
                    RequireNoFlags(iov);
                    AddDeltas(iov);
                    break;
                default:
                    throw new PageServerProtocolException($"unknown command 0x{iov.Cmd:x}");
            }
        }
    }

    private static void RequireNoFlags(in PageServerIov iov)
    {
        if (iov.Flags != PagemapFlags.None)
            throw new PageServerProtocolException($"command {iov.Command} carries flags 0x{(uint)iov.Flags:x}; only ADD_F has flags");
    }

    private static (PageServerImageType Type, ulong Id) Decode(ulong dst)
    {
        if (!PageServerIov.TryDecodeDst(dst, out var type, out ulong id))
            throw new PageServerProtocolException($"unknown pagemap type {dst & 0xff} in dst_id 0x{dst:x}");
        if (type == PageServerImageType.Pid && (id == 0 || id > int.MaxValue))
            throw new PageServerProtocolException($"pid {id} in dst_id 0x{dst:x} is not a pid");
        return (type, id);
    }

    private static string PagemapName(PageServerImageType type, ulong id) =>
        type == PageServerImageType.Pid ? ImageNames.Pagemap((int)id) : ImageNames.ShmemPagemap(id);

    private string? ParentDir()
    {
        if (_dir is null && o.PrevImagesDir is null)
            return null;
        var link = Path.Combine(o.ImagesDir, ImageNames.ParentLink);
        return Directory.Exists(link) ? link : o.PrevImagesDir is { } p ? (Path.IsPathRooted(p) ? p : Path.Combine(o.ImagesDir, p)) : null;
    }

    /// <summary>criu/page-xfer.c check_parent_local_xfer: the parent directory holds this pagemap.</summary>
    private bool HasParentImage(PageServerImageType type, ulong id) =>
        ParentDir() is { } p && File.Exists(Path.Combine(p, PagemapName(type, id)));

    private void EnsureDir()
    {
        if (_dir is not null)
            return;
        Checkpointer.PrepareImagesDir(o.ImagesDir, null);
        _dir = ImageDirectory.Create(o.ImagesDir);
        if (o.PrevImagesDir is not null)
            _dir.LinkParent(o.PrevImagesDir);
    }

    private bool Open(ulong dst)
    {
        var (type, id) = Decode(dst);
        if (!_done.Add(dst))
            throw new PageServerProtocolException($"{PagemapName(type, id)} opened a second time in one session");
        EnsureDir();
        FinishCurrent();
        _w = type == PageServerImageType.Pid
            ? _dir!.BeginPagemap((int)id, o.PageStore)
            : _dir!.BeginShmemPagemap(id, _dir.NextPagesId(), o.PageStore);
        _cur = dst;
        _curType = type;
        _curId = id;
        _nextFree = 0;
        _parentPm = null;
        _pagemaps++;
        return HasParentImage(type, id);
    }

    private void FinishCurrent()
    {
        if (_w is null)
            return;
        _w.Finish();
        _w.Dispose();
        _w = null;
    }

    private void Add(in PageServerIov iov, PagemapFlags flags)
    {
        // criu/page-xfer.c prep_loc_xfer: IO without OPEN (older clients) opens implicitly.
        if (iov.DstId != _cur)
            Open(iov.DstId);
        ulong va = iov.Vaddr, nr = iov.NrPages;
        if (nr == 0 || nr > uint.MaxValue)
            throw new PageServerProtocolException($"entry at 0x{va:x} with {nr} pages: an entry holds 1..2^32-1 pages");
        if ((va & (PageGeometry.PageSize - 1)) != 0)
            throw new PageServerProtocolException($"vaddr 0x{va:x} is not page aligned");
        if (nr > (ulong.MaxValue - va) >> PageGeometry.PageShift)
            throw new PageServerProtocolException($"entry at 0x{va:x} with {nr} pages runs past the address space");
        if (va < _nextFree)
            throw new PageServerProtocolException($"entry at 0x{va:x} is out of order: entries must ascend, the previous one ended at 0x{_nextFree:x}");
        ulong end = va + (nr << PageGeometry.PageShift);
        bool blocks = ((uint)flags & PageServerBlocks.Flag) != 0;
        flags &= ~(PagemapFlags)PageServerBlocks.Flag;
        if (blocks && (flags & PagemapFlags.Present) == 0)
            throw new PageServerProtocolException($"entry at 0x{va:x}: compressed blocks without PE_PRESENT");
        switch (flags)
        {
            case PagemapFlags.Present:
            case PagemapFlags.Present | PagemapFlags.Lazy:
                ReceivePages(va, nr, (flags & PagemapFlags.Lazy) != 0, blocks);
                _pagesWritten += nr;
                break;
            case PagemapFlags.Parent:
                CheckHoleInParent(va, end);
                _w!.AddParentHole(va, nr);
                _pagesParent += nr;
                break;
            case PagemapFlags.Lazy:
                _w!.AddLazy(va, nr);
                break;
            default:
                throw new PageServerProtocolException($"entry at 0x{va:x} has flags 0x{(uint)flags:x}: expected PE_PRESENT, PE_PARENT or PE_LAZY");
        }
        _nextFree = end;
    }

    private void ReceivePages(ulong va, ulong nr, bool lazy, bool blocks)
    {
        ulong left = nr << PageGeometry.PageShift;
        int maxPart = MaxHeldBytes;
        if (blocks)
        {
            _decoder ??= new PageServerBlocks.Decoder();
            int blockBytes;
            try
            {
                blockBytes = _decoder.BeginEntry(s);
            }
            catch (InvalidDataException e)
            {
                throw new PageServerProtocolException($"entry at 0x{va:x}: {e.Message}");
            }
            _bytes += 4;
            maxPart = MaxHeldBytes / blockBytes * blockBytes;
        }
        while (left > 0)
        {
            int part = (int)Math.Min(left, (ulong)maxPart);
            if (blocks)
            {
                // Decoded size is bounded by the part; wire bytes by the codec's bound per block.
                if (_buf.Length < part)
                    Array.Resize(ref _buf, part);
                try
                {
                    _bytes += _decoder!.ReadBlocks(s, _buf.AsSpan(0, part));
                }
                catch (InvalidDataException e)
                {
                    throw new PageServerProtocolException($"entry at 0x{va:x}: {e.Message}");
                }
            }
            else
            {
                int have = 0;
                while (have < part)
                {
                    int n = Math.Min(ReadChunk, part - have);
                    if (_buf.Length < have + n)
                        Array.Resize(ref _buf, (int)Math.Min(MaxHeldBytes, Math.Max((long)have + n, (long)_buf.Length * 2)));
                    s.ReadExactly(_buf, have, n);
                    have += n;
                }
                _bytes += part;
            }
            _w!.AddPresent(va, _buf.AsSpan(0, part), lazy);
            va += (ulong)part;
            left -= (ulong)part;
        }
    }

    /// <summary>
    /// PS_IOV_ADD_DELTA (criu-sharp extension, <see cref="PageServerDeltas"/>): nr_pages PE_DELTA
    /// pages, written as a local dump writes them (deltas-N.img, delta_sizes, delta_checksums).
    /// Their bases must be in the parent, as a hole's; the checksums are checked on restore.
    /// </summary>
    private void AddDeltas(in PageServerIov iov)
    {
        if (iov.DstId != _cur)
            Open(iov.DstId);
        ulong va = iov.Vaddr, nr = iov.NrPages;
        if (nr == 0 || nr > PageServerDeltas.MaxPages)
            throw new PageServerProtocolException($"delta entry at 0x{va:x} with {nr} pages: one ADD_DELTA holds 1..{PageServerDeltas.MaxPages} pages");
        if ((va & (PageGeometry.PageSize - 1)) != 0)
            throw new PageServerProtocolException($"vaddr 0x{va:x} is not page aligned");
        if (nr > (ulong.MaxValue - va) >> PageGeometry.PageShift)
            throw new PageServerProtocolException($"delta entry at 0x{va:x} with {nr} pages runs past the address space");
        if (va < _nextFree)
            throw new PageServerProtocolException($"delta entry at 0x{va:x} is out of order: entries must ascend, the previous one ended at 0x{_nextFree:x}");
        ulong end = va + (nr << PageGeometry.PageShift);
        Span<byte> word = stackalloc byte[PageServerDeltas.EncodingBytes];
        s.ReadExactly(word);
        uint encoding = PageServerDeltas.ReadEncoding(word);
        if (encoding != (uint)DeltaEncoding.Xbzrle)
            throw new PageServerProtocolException($"delta entry at 0x{va:x}: unknown delta encoding {encoding}");
        int n = (int)nr;
        var records = new byte[n * PageServerDeltas.RecordBytes];
        s.ReadExactly(records);
        long total = 0;
        for (int i = 0; i < n; i++)
        {
            var (size, _) = PageServerDeltas.ReadRecord(records.AsSpan(i * PageServerDeltas.RecordBytes));
            if (size > PageGeometry.PageSize)
                throw new PageServerProtocolException($"delta of page 0x{va + ((ulong)i << PageGeometry.PageShift):x} claims {size} bytes, more than a page");
            total += size;
        }
        CheckHoleInParent(va, end, "delta pages");
        if (_buf.Length < total)
            Array.Resize(ref _buf, (int)Math.Max(total, _buf.Length * 2L));
        s.ReadExactly(_buf, 0, (int)total);
        int off = 0;
        for (int i = 0; i < n; i++)
        {
            var (size, checksum) = PageServerDeltas.ReadRecord(records.AsSpan(i * PageServerDeltas.RecordBytes));
            _w!.AddDelta(va + ((ulong)i << PageGeometry.PageShift), _buf.AsSpan(off, (int)size), checksum);
            off += (int)size;
        }
        _bytes += 4 + records.Length + total;
        _pagesWritten += nr;
        _nextFree = end;
    }

    /// <summary>criu/page-xfer.c check_pagehole_in_parent: a hole must be covered by the parent's entries.</summary>
    private void CheckHoleInParent(ulong va, ulong end, string what = "hole")
    {
        if (_parentPm is null)
        {
            string? dir = ParentDir();
            string name = PagemapName(_curType, _curId);
            if (dir is null || !File.Exists(Path.Combine(dir, name)))
                throw new PageServerProtocolException($"{what} 0x{va:x}-0x{end:x} in {name}, but there is no parent {name}");
            _parentPm = PagemapImage.Load(Path.Combine(dir, name));
        }
        var entries = _parentPm.Entries;
        ulong at = va;
        int i = _parentPm.FirstEntryEndingAfter(at);
        while (at < end)
        {
            // A PE_DELTA page of the parent's is a version of the page too (its own base is further down).
            if (i < 0 || i >= entries.Count || entries[i].Vaddr > at
                || (PagemapImage.FlagsOf(entries[i]) & (PagemapFlags.Present | PagemapFlags.Parent | PagemapFlags.Delta)) == 0)
                throw new PageServerProtocolException($"{what} 0x{va:x}-0x{end:x}: 0x{at:x} is not in the parent image");
            at = entries[i].Vaddr + (PagemapImage.NrPages(entries[i]) << PageGeometry.PageShift);
            i++;
        }
    }

    private void Commit()
    {
        EnsureDir();
        FinishCurrent();
        _dir!.Commit();
    }

    private void Reply(ReadOnlySpan<byte> bytes)
    {
        s.Write(bytes);
        s.Flush();
    }

    /// <summary>Reads a whole header, or returns fewer bytes only at the end of the stream.</summary>
    private int ReadSome(byte[] buffer)
    {
        int got = 0;
        while (got < buffer.Length)
        {
            int n = s.Read(buffer, got, buffer.Length - got);
            if (n == 0)
                break;
            got += n;
        }
        return got;
    }
}

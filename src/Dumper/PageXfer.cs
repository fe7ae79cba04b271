using CriuSharp.ImageFormat;
using CriuSharp.ImageFormat.Images;

namespace CriuSharp.Dumper;

/// <summary>
/// Moves what a <see cref="PagePipe"/> holds into a pagemap + pages pair (criu/page-xfer.c):
/// <code>
///  pipe iov {va, bytes}  ──AddPresent──▶  pagemap entry PE_PRESENT + (compressed) blocks in pages-N.img
///  pipe iov {va, HOLE}   ──AddParentHole▶ pagemap entry PE_PARENT (no bytes)
/// </code>
/// It remembers the PE_PRESENT ranges it wrote, so <see cref="Dedup"/> can punch what they
/// supersede out of the parent chain afterwards (--auto-dedup).
/// </summary>
internal sealed class PageXfer : IDisposable
{
    private readonly PagemapWriter _writer;
    private readonly List<(ulong Va, ulong End)> _written = [];

    public PageXfer(PagemapWriter writer) => _writer = writer;

    public void Write(PagePipe pipe)
    {
        foreach (var iov in pipe.Iovs)
        {
            if (iov.Hole)
            {
                _writer.AddParentHole(iov.Va, iov.HolePages);
                continue;
            }
            _writer.AddPresent(iov.Va, pipe.Buffer(iov.Buf, iov.Off, iov.Bytes));
            ulong end = iov.Va + (ulong)iov.Bytes;
            if (_written.Count > 0 && _written[^1].End == iov.Va)
                _written[^1] = (_written[^1].Va, end);
            else
                _written.Add((iov.Va, end));
        }
    }

    public PageWriteStats Finish() => _writer.Finish();

    public IReadOnlyList<(ulong Va, ulong End)> WrittenRanges => _written;

    public void Dispose() => _writer.Dispose();

    /// <summary>
    /// criu/pagemap.c dedup_one_iovec: for every range the new image stores, punch the same range
    /// out of the parent's pages file; where the parent itself has a PE_PARENT hole, go one level
    /// further down. With raw pages (CRIU's layout) whole 4 KiB pages are punched, as CRIU does.
    /// With compressed pages a block can only go when every page in it is superseded, so only such
    /// blocks are punched; pages sharing a block with still-needed pages stay.
    /// Returns the bytes punched.
    /// </summary>
    public static long Dedup(ImageSet? parent, string pagemapName, IReadOnlyList<(ulong Va, ulong End)> ranges)
    {
        long punched = 0;
        for (var set = parent; set is not null && ranges.Count > 0; set = set.Parent)
        {
            if (!set.Has(pagemapName))
                break;
            var pm = PagemapImage.Load(set.PathOf(pagemapName));
            var next = new List<(ulong, ulong)>();
            using var fs = pm.PagesLength > 0 ? new FileStream(set.PathOf(pm.PagesFileName), FileMode.Open, FileAccess.ReadWrite) : null;
            long dataOff = 0;
            int ri = 0;
            foreach (var e in pm.Entries)
            {
                ulong nr = PagemapImage.NrPages(e);
                ulong eStart = e.Vaddr, eEnd = e.Vaddr + (nr << 12);
                var flags = PagemapImage.FlagsOf(e);
                bool present = (flags & PagemapFlags.Present) != 0;
                long entryBytes = present ? (pm.Compression == PageCompression.None ? (long)(nr << 12) : e.BlockSizes.Sum(x => (long)x)) : 0;
                while (ri < ranges.Count && ranges[ri].End <= eStart) ri++;
                for (int k = ri; k < ranges.Count && ranges[k].Va < eEnd; k++)
                {
                    ulong s = Math.Max(eStart, ranges[k].Va), t = Math.Min(eEnd, ranges[k].End);
                    if (s >= t) continue;
                    if ((flags & PagemapFlags.Parent) != 0 && !present)
                    {
                        next.Add((s, t));
                        continue;
                    }
                    if (!present || fs is null) continue;
                    if (pm.Compression == PageCompression.None)
                    {
                        long off = dataOff + (long)(s - eStart);
                        Interop.Libc.PunchHole(fs.SafeFileHandle, off, (long)(t - s), fs.Name);
                        punched += (long)(t - s);
                    }
                    else
                    {
                        int bp = pm.BlockPages;
                        long boff = dataOff;
                        for (int b = 0; b < e.BlockSizes.Count; b++)
                        {
                            ulong bs = eStart + ((ulong)(b * bp) << 12);
                            ulong be = Math.Min(eEnd, bs + ((ulong)bp << 12));
                            uint size = e.BlockSizes[b];
                            if (bs >= s && be <= t && size > 0)
                            {
                                Interop.Libc.PunchHole(fs.SafeFileHandle, boff, size, fs.Name);
                                punched += size;
                            }
                            boff += size;
                        }
                    }
                }
                dataOff += entryBytes;
            }
            ranges = next;
        }
        return punched;
    }
}

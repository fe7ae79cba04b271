using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>
/// Destination pre-loading (criu issue 2150): each pre-dump is applied as it arrives to a frozen,
/// pre-restored copy of the tree's anonymous memory, so the final restore applies only the final
/// dump's own pages and takes every PE_PARENT range from what is already in place instead of
/// re-reading and decompressing the whole chain inside the downtime.
/// <code>
///  pre-dump 1 ─Apply─▶ pid → {va → page}      (PE_PRESENT pages copied in)
///  pre-dump 2 ─Apply─▶ PE_PRESENT replaces, PE_PARENT keeps, no entry drops (as the chain reads)
///  dump       ─restore─▶ PE_PRESENT from the image, PE_PARENT from here (no read, no decompress)
/// </code>
/// The state after each Apply is exactly what reading the chain up to that image would give, so
/// the final restore's contents are unchanged (and the VMA checksums still verify them).
/// </summary>
public sealed class PreloadedPages
{
    private Dictionary<int, Dictionary<ulong, byte[]>> _pages = [];

    /// <summary>Bytes decompressed and copied by the last <see cref="Apply"/> (work done while the source still runs).</summary>
    public ulong LastApplyBytes { get; private set; }
    /// <summary>Bytes read from the last applied image's pages files.</summary>
    public ulong LastApplyBytesRead { get; private set; }
    public int Applied { get; private set; }

    /// <summary>Applies one pre-dump (or any image directory of the chain) on top of what is preloaded.</summary>
    public void Apply(string imagesDir)
    {
        ImageSet set;
        try
        {
            set = ImageSet.Open(imagesDir);
        }
        catch (ImageFormatException e)
        {
            throw new DumperException($"cannot preload: {e.Message}", null, imagesDir, inner: e);
        }
        var next = new Dictionary<int, Dictionary<ulong, byte[]>>();
        ulong bytes = 0, read = 0;
        foreach (int pid in set.PagemapPids())
        {
            _pages.TryGetValue(pid, out var old);
            var mine = new Dictionary<ulong, byte[]>();
            using var reader = set.OpenPageReader(pid);
            foreach (var e in reader.Pagemap.Entries)
            {
                var flags = PagemapImage.FlagsOf(e);
                ulong nr = PagemapImage.NrPages(e);
                if ((flags & PagemapFlags.Present) != 0)
                {
                    // Whole entries in 1 MiB pieces: a compressed block is decompressed once.
                    var buf = new byte[(int)Math.Min(nr << PageGeometry.PageShift, 1UL << 20)];
                    for (ulong done = 0; done < nr;)
                    {
                        int n = (int)Math.Min(nr - done, (ulong)(buf.Length >> PageGeometry.PageShift));
                        ulong at = e.Vaddr + (done << PageGeometry.PageShift);
                        reader.Read(at, buf.AsSpan(0, n << PageGeometry.PageShift));
                        for (int i = 0; i < n; i++)
                            mine[at + ((ulong)i << PageGeometry.PageShift)] = buf.AsSpan(i << PageGeometry.PageShift, PageGeometry.PageSize).ToArray();
                        bytes += (ulong)n << PageGeometry.PageShift;
                        done += (ulong)n;
                    }
                }
                else if ((flags & PagemapFlags.Parent) != 0 && old is not null)
                {
                    for (ulong i = 0; i < nr; i++)
                    {
                        ulong va = e.Vaddr + (i << PageGeometry.PageShift);
                        if (old.TryGetValue(va, out var kept))
                            mine[va] = kept;
                    }
                }
            }
            read += reader.Stats.BytesRead;
            next[pid] = mine;
        }
        _pages = next;
        LastApplyBytes = bytes;
        LastApplyBytesRead = read;
        Applied++;
    }

    /// <summary>Copies preloaded pages into <paramref name="dest"/>; false when any page of the range is not preloaded.</summary>
    public bool TryRead(int pid, ulong va, Span<byte> dest)
    {
        if (!_pages.TryGetValue(pid, out var mine))
            return false;
        for (int off = 0; off < dest.Length; off += PageGeometry.PageSize)
        {
            if (!mine.TryGetValue(va + (ulong)off, out var page))
                return false;
            page.CopyTo(dest.Slice(off, PageGeometry.PageSize));
        }
        return true;
    }
}

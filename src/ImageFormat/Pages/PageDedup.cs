using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace CriuSharp.ImageFormat;

/// <summary>
/// criu/pagemap.c dedup_one_iovec: for every range a new image stores, punch the same range out of
/// the parent's pages file; where the parent itself has a PE_PARENT hole, go one level further
/// down. With raw pages (CRIU's layout) whole 4 KiB pages are punched, as CRIU does. With
/// compressed pages a block can only go when every page in it is superseded, so only such blocks
/// are punched; pages sharing a block with still-needed pages stay. Offsets come from the
/// pagemap's own index (<see cref="PagemapImage"/>), so this is the one place that knows where a
/// page's bytes sit in a pages file.
/// </summary>
public static class PageDedup
{
    /// <summary>
    /// Punches <paramref name="ranges"/> (ascending, [Va, End)) of pagemap <paramref name="pagemapName"/>
    /// out of <paramref name="parent"/> and its ancestors; returns the bytes punched.
    /// Throws <see cref="HolePunchException"/> when the filesystem refuses to punch.
    /// </summary>
    public static long PunchSuperseded(ImageSet? parent, string pagemapName, IReadOnlyList<(ulong Va, ulong End)> ranges)
    {
        long punched = 0;
        for (var set = parent; set is not null && ranges.Count > 0; set = set.Parent)
        {
            if (!set.Has(pagemapName))
                break;
            var pm = PagemapImage.Load(set.PathOf(pagemapName));
            var next = new List<(ulong, ulong)>();
            using var fs = pm.PagesLength > 0 ? new FileStream(set.PathOf(pm.PagesFileName), FileMode.Open, FileAccess.ReadWrite) : null;
            int ri = 0;
            for (int i = 0; i < pm.Entries.Count; i++)
            {
                var e = pm.Entries[i];
                ulong eStart = e.Vaddr, eEnd = e.Vaddr + (PagemapImage.NrPages(e) << PageGeometry.PageShift);
                var flags = PagemapImage.FlagsOf(e);
                bool present = (flags & PagemapFlags.Present) != 0;
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
                        PunchHole(fs, pm.DataOffset(i) + (long)(s - eStart), (long)(t - s));
                        punched += (long)(t - s);
                        continue;
                    }
                    int bp = pm.BlockPages;
                    for (int b = 0; b < e.BlockSizes.Count; b++)
                    {
                        ulong bs = eStart + ((ulong)(b * bp) << PageGeometry.PageShift);
                        ulong be = Math.Min(eEnd, bs + ((ulong)bp << PageGeometry.PageShift));
                        uint size = e.BlockSizes[b];
                        if (bs >= s && be <= t && size > 0)
                        {
                            PunchHole(fs, pm.BlockOffset(i, b), size);
                            punched += size;
                        }
                    }
                }
            }
            ranges = next;
        }
        return punched;
    }

    /// <summary>fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads back as zeros, offsets stay.</summary>
    private static void PunchHole(FileStream fs, long offset, long len)
    {
        if (len <= 0)
            return;
        if (Interop.Libc.Fallocate(fs.SafeFileHandle, Interop.Libc.FALLOC_FL_PUNCH_HOLE | Interop.Libc.FALLOC_FL_KEEP_SIZE, offset, len) != 0)
            throw new HolePunchException($"auto-dedup: cannot punch {len} bytes at offset {offset} of {fs.Name} (errno {Marshal.GetLastPInvokeError()})");
    }
}

/// <summary>fallocate(FALLOC_FL_PUNCH_HOLE) failed on a pages file.</summary>
public sealed class HolePunchException(string message) : IOException(message);

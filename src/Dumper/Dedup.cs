using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>What <see cref="Dedup.Run"/> did: the pagemaps examined and the parent bytes punched out.</summary>
public sealed record DedupResult(string ImagesDir, IReadOnlyList<int> Pids, long BytesPunched);

/// <summary>
/// CRIU's <c>criu dedup</c> (criu/cr-dedup.c): after the fact, for every page an image set stores
/// itself, punch the same page out of its parents' pages files, so a chain of pre-dumps only keeps
/// each page once. The same work <c>--auto-dedup</c> does during a dump.
/// </summary>
public static class Dedup
{
    public static DedupResult Run(string imagesDir)
    {
        var set = ImageSet.Open(imagesDir);
        long punched = 0;
        var pids = set.PagemapPids();
        if (set.Parent is null)
            return new DedupResult(set.Path, pids, 0);
        foreach (int pid in pids)
        {
            string name = ImageNames.Pagemap(pid);
            var pm = PagemapImage.Load(set.PathOf(name));
            var ranges = new List<(ulong Va, ulong End)>();
            foreach (var e in pm.Entries)
                if ((PagemapImage.FlagsOf(e) & PagemapFlags.Present) != 0)
                    ranges.Add((e.Vaddr, e.Vaddr + (PagemapImage.NrPages(e) << 12)));
            punched += PageXfer.Dedup(set.Parent, name, ranges);
        }
        return new DedupResult(set.Path, pids, punched);
    }
}

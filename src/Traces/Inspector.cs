using CriuSharp.ImageFormat;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Traces;

/// <summary>Page counts and bytes of one VMA (or a whole process) in one image.</summary>
public sealed class PageFigures
{
    /// <summary>Resident at the image's instant: stored here or in a parent.</summary>
    public ulong Present { get; set; }
    /// <summary>Carried by this image (PE_PRESENT), zero pages included.</summary>
    public ulong Written { get; set; }
    /// <summary>Written pages left out of the pages file because they are all zero.</summary>
    public ulong Zero { get; set; }
    /// <summary>PE_PARENT: unchanged since the parent image.</summary>
    public ulong InParent { get; set; }
    /// <summary>Written pages × 4096.</summary>
    public ulong RawBytes { get; set; }
    /// <summary>Bytes in the pages file (compressed blocks, or raw pages).</summary>
    public ulong StoredBytes { get; set; }
    public double Ratio => StoredBytes == 0 ? 0 : (double)RawBytes / StoredBytes;

    public void Add(PageFigures o)
    {
        Present += o.Present;
        Written += o.Written;
        Zero += o.Zero;
        InParent += o.InParent;
        RawBytes += o.RawBytes;
        StoredBytes += o.StoredBytes;
    }
}

public sealed record VmaFigures(string Start, string End, string Prot, string Name, PageFigures Pages);

public sealed record ProcessFigures(int Pid, PageFigures Total, IReadOnlyList<VmaFigures> Vmas);

/// <summary>One image directory of a chain (oldest first).</summary>
public sealed record ImageFigures(string Dir, ulong? TimeNs, string Compression, PageFigures Total, IReadOnlyList<ProcessFigures> Processes);

/// <summary>What <c>inspect</c> shows: a row per image of the chain, per process and per VMA.</summary>
public sealed record Inspection(string Path, bool IsTrace, int? Pid, string? Comm, bool? EndedEarly, IReadOnlyList<ImageFigures> Images, PageFigures Total);

/// <summary>
/// <c>inspect</c>, in the manner of checkpointctl: reads the pagemaps of an image directory's
/// parent chain, or of every sample of a trace, and counts pages present, written, zero and in
/// parent, with raw and stored bytes, per process and per VMA. VMAs come from the trace's index,
/// else from the newest mm image of the chain; a pre-dump chain without either is shown per process.
/// </summary>
public static class Inspector
{
    public static Inspection Inspect(string path)
    {
        path = Path.GetFullPath(path);
        if (File.Exists(Path.Combine(path, TraceIndex.FileName)))
        {
            var t = TraceFile.Open(path);
            var images = new List<ImageFigures>();
            for (int i = 0; i < t.Samples; i++)
                images.Add(Image(t.Set(i), t.TimeNs(i), pid => t.Vmas(i, pid)));
            return Finish(path, true, t.Index.Pid, t.Index.Comm, t.Index.EndedEarly, images);
        }
        var top = ImageSet.Open(path);
        var chain = top.Chain().Reverse().ToList();
        // A dump's mm images hold the VMAs; pre-dumps have none, so the newest one found serves the chain.
        var mmSet = top.Chain().FirstOrDefault(s => s.PagemapPids().Any(pid => s.Has(ImageNames.Mm(pid))));
        Func<int, IReadOnlyList<TraceVma>> vmas = pid => mmSet is not null && mmSet.Has(ImageNames.Mm(pid))
            ? [.. mmSet.ReadMm(pid).Vmas.Select(v => new TraceVma(v.Start, v.End, (KernelApi.Prot)(v.Prot & 7), ""))]
            : [];
        return Finish(path, false, null, null, null, [.. chain.Select(s => Image(s, null, vmas))]);
    }

    private static Inspection Finish(string path, bool trace, int? pid, string? comm, bool? early, List<ImageFigures> images)
    {
        var total = new PageFigures();
        foreach (var i in images)
            total.Add(i.Total);
        return new Inspection(path, trace, pid, comm, early, images, total);
    }

    private static ImageFigures Image(ImageSet set, ulong? time, Func<int, IReadOnlyList<TraceVma>> vmasOf)
    {
        var procs = new List<ProcessFigures>();
        var total = new PageFigures();
        string compression = "none";
        foreach (int pid in set.PagemapPids())
        {
            var map = set.ReadPagemap(pid);
            compression = map.Compression.ToString().ToLowerInvariant();
            var vmas = vmasOf(pid);
            var perVma = vmas.Select(_ => new PageFigures()).ToArray();
            var other = new PageFigures();
            var proc = new PageFigures();
            for (int i = 0; i < map.Entries.Count; i++)
            {
                var e = map.Entries[i];
                var f = Entry(map, i);
                proc.Add(f);
                ulong n = PagemapImage.NrPages(e);
                ulong end = e.Vaddr + (n << PageGeometry.PageShift);
                // An entry lies inside one VMA (CRIU never lets a pagemap entry span two).
                int v = Find(vmas, e.Vaddr);
                if (v >= 0 && end <= vmas[v].End)
                    perVma[v].Add(f);
                else
                    other.Add(f);
            }
            var rows = new List<VmaFigures>();
            for (int v = 0; v < vmas.Count; v++)
                if (perVma[v].Present > 0)
                    rows.Add(new VmaFigures($"0x{vmas[v].Start:x}", $"0x{vmas[v].End:x}", TraceVmaRecord.ProtText(vmas[v].Prot), vmas[v].Name, perVma[v]));
            if (other.Present > 0)
                rows.Add(new VmaFigures("", "", "", vmas.Count == 0 ? "(no VMA list: a pre-dump holds no mm image)" : "(outside the listed VMAs)", other));
            procs.Add(new ProcessFigures(pid, proc, rows));
            total.Add(proc);
        }
        return new ImageFigures(set.Path, time, compression, total, procs);
    }

    private static PageFigures Entry(PagemapImage map, int i)
    {
        var e = map.Entries[i];
        ulong n = PagemapImage.NrPages(e);
        var flags = PagemapImage.FlagsOf(e);
        var f = new PageFigures();
        if ((flags & PagemapFlags.Present) != 0)
        {
            ulong zero = (ulong)PagemapImage.ZeroPageCount(e);
            f.Present = f.Written = n;
            f.Zero = Math.Min(zero, n);
            f.RawBytes = n << PageGeometry.PageShift;
            f.StoredBytes = (ulong)map.StoredBytes(i);
        }
        else if ((flags & PagemapFlags.Parent) != 0)
            f.Present = f.InParent = n;
        return f;
    }

    private static int Find(IReadOnlyList<TraceVma> vmas, ulong va)
    {
        int lo = 0, hi = vmas.Count - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            if (vmas[mid].End <= va)
                lo = mid + 1;
            else if (vmas[mid].Start > va)
                hi = mid - 1;
            else
                return mid;
        }
        return -1;
    }
}

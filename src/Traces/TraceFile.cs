using CriuSharp.ImageFormat;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Traces;

/// <summary>
/// Reads a trace (see <see cref="TraceIndex"/>) for the simulator's <c>trace</c> workloads. Opening
/// checks the index and every sample's pagemaps, so a damaged trace is refused at once with the
/// file at fault; page contents are read on demand (each compressed block's checksum is checked
/// then, as on restore).
/// </summary>
public sealed class TraceFile : IRecordedTrace
{
    private readonly TraceIndex _index;
    private readonly ImageSet[] _sets;
    /// <summary>Per sample: pid → pagemap (absent once the process is gone).</summary>
    private readonly Dictionary<int, PagemapImage>[] _pagemaps;
    /// <summary>Per sample: pid → VMAs.</summary>
    private readonly Dictionary<int, List<TraceVma>>[] _vmas;
    private readonly Lock _gate = new();
    private (int Sample, int Pid, PageReader Reader)? _chainReader;
    private byte[]? _contentPool;

    /// <summary>Registers this reader for the simulator's trace workloads (once per program).</summary>
    public static void Register() => TraceLibrary.Register(path => Open(path));

    public static TraceFile Open(string path) => new(System.IO.Path.GetFullPath(path));

    private TraceFile(string path)
    {
        Path = path;
        _index = TraceIndex.Load(path);
        int n = _index.Samples.Count;
        _sets = new ImageSet[n];
        _pagemaps = new Dictionary<int, PagemapImage>[n];
        _vmas = new Dictionary<int, List<TraceVma>>[n];
        string indexFile = System.IO.Path.Combine(path, TraceIndex.FileName);
        var pids = new List<int>();
        for (int i = 0; i < n; i++)
        {
            var sample = _index.Samples[i];
            string dir = System.IO.Path.Combine(path, sample.Dir);
            _sets[i] = ImageSet.Open(dir);
            if (i > 0 && (_sets[i].Parent is not { } parent || parent.CanonicalPath != _sets[i - 1].CanonicalPath))
                throw new ImageFormatException(System.IO.Path.Combine(dir, "parent"), "parent link", null,
                    $"does not lead to the previous sample's directory {_sets[i - 1].Path}");
            _pagemaps[i] = [];
            _vmas[i] = [];
            foreach (var p in sample.Processes)
            {
                if (!pids.Contains(p.Pid))
                    pids.Add(p.Pid);
                if (!_sets[i].HasPagemap(p.Pid))
                    throw new ImageFormatException(_sets[i].PathOf(ImageNames.Pagemap(p.Pid)), "pagemap", null, "missing: the index lists this process in the sample");
                _pagemaps[i][p.Pid] = _sets[i].ReadPagemap(p.Pid);
                List<TraceVma> vmas;
                if (p.Vmas is not null)
                    vmas = [.. p.Vmas.Select(v => v.Parse(indexFile, i)).OrderBy(v => v.Start)];
                else
                {
                    if (i == 0 || !_vmas[i - 1].TryGetValue(p.Pid, out var prev))
                        throw new ImageFormatException(indexFile, "trace index", null, $"samples[{i}] process {p.Pid}: changes without a previous VMA list");
                    var changes = p.VmaChanges ?? [];
                    vmas = VmaDiff.Apply(prev,
                        changes.Where(c => c.Op == "unmap").Select(c => c.Parse(indexFile, i)),
                        changes.Where(c => c.Op == "map").Select(c => c.Parse(indexFile, i)),
                        changes.Where(c => c.Op == "protect").Select(c => c.Parse(indexFile, i)));
                }
                _vmas[i][p.Pid] = vmas;
            }
        }
        Pids = pids;
    }

    public string Path { get; }
    public TraceIndex Index => _index;
    public int Samples => _index.Samples.Count;
    public ulong TimeNs(int sample) => _index.Samples[sample].TimeNs;
    public ulong IntervalNs => _index.IntervalNs;
    public IReadOnlyList<int> Pids { get; }

    /// <summary>The sample's image directory.</summary>
    public ImageSet Set(int sample) => _sets[sample];

    public IReadOnlyList<TraceVma> Vmas(int sample, int pid) =>
        _vmas[sample].TryGetValue(pid, out var v) ? v : [];

    /// <summary>The sample's pagemap of the process, or null once it is gone.</summary>
    public PagemapImage? Pagemap(int sample, int pid) => _pagemaps[sample].GetValueOrDefault(pid);

    public void Writes(int sample, int pid, TraceWriteVisitor visit)
    {
        if (Pagemap(sample, pid) is not { } map)
            return;
        var set = _sets[sample];
        using var pages = map.PagesLength > 0 ? PagesSource.OpenFile(set.PathOf(map.PagesFileName)) : null;
        using var reader = new PageReader(map, pages);
        const int RunPages = 64;
        var buf = new byte[RunPages * PageGeometry.PageSize];
        foreach (var e in map.Entries)
        {
            if ((PagemapImage.FlagsOf(e) & PagemapFlags.Present) == 0)
                continue;
            ulong n = PagemapImage.NrPages(e);
            for (ulong done = 0; done < n;)
            {
                int chunk = (int)Math.Min(RunPages, n - done);
                ulong va = e.Vaddr + (done << PageGeometry.PageShift);
                var span = buf.AsSpan(0, chunk * PageGeometry.PageSize);
                reader.Read(va, span);
                for (int p = 0; p < chunk; p++)
                    visit(va + ((ulong)p << PageGeometry.PageShift), span.Slice(p * PageGeometry.PageSize, PageGeometry.PageSize));
                done += (ulong)chunk;
            }
        }
    }

    public IReadOnlyList<(ulong Start, ulong End)> Dropped(int sample, int pid)
    {
        if (sample == 0 || Pagemap(sample - 1, pid) is not { } before)
            return [];
        var now = Pagemap(sample, pid);
        return VmaDiff.Minus(Covered(before), now is null ? [] : Covered(now));
    }

    /// <summary>The pages a pagemap says are present (stored here or in a parent), as ranges.</summary>
    private static List<TraceVma> Covered(PagemapImage map)
    {
        var list = new List<TraceVma>();
        foreach (var e in map.Entries)
        {
            var f = PagemapImage.FlagsOf(e);
            if ((f & (PagemapFlags.Present | PagemapFlags.Parent)) == 0)
                continue;
            ulong end = e.Vaddr + (PagemapImage.NrPages(e) << PageGeometry.PageShift);
            if (list.Count > 0 && list[^1].End == e.Vaddr)
                list[^1] = list[^1] with { End = end };
            else
                list.Add(new TraceVma(e.Vaddr, end, 0, ""));
        }
        return list;
    }

    public bool ReadPage(int sample, int pid, ulong va, Span<byte> destination)
    {
        lock (_gate)
        {
            if (_chainReader is not { } c || c.Sample != sample || c.Pid != pid)
            {
                _chainReader?.Reader.Dispose();
                _chainReader = null;
                if (Pagemap(sample, pid) is null)
                {
                    destination[..PageGeometry.PageSize].Clear();
                    return false;
                }
                _chainReader = (sample, pid, _sets[sample].OpenPageReader(pid));
            }
            var reader = _chainReader.Value.Reader;
            var where = reader.Locate(va);
            if (where is PageLocation.Absent or PageLocation.Lazy)
            {
                destination[..PageGeometry.PageSize].Clear();
                return false;
            }
            reader.ReadPage(va, destination);
            return true;
        }
    }

    /// <summary>At most this many pages (64 MiB) of real contents are kept for synthetic workloads.</summary>
    public const int MaxContentPages = 16384;

    public long ContentPages => ContentPool().Length / PageGeometry.PageSize;

    public void ReadContentPage(long index, Span<byte> destination) =>
        ContentPool().AsSpan((int)(index * PageGeometry.PageSize), PageGeometry.PageSize).CopyTo(destination);

    /// <summary>The non-zero pages of the first sample (the full image), in pid and address order, up to <see cref="MaxContentPages"/>.</summary>
    private byte[] ContentPool()
    {
        lock (_gate)
        {
            if (_contentPool is not null)
                return _contentPool;
            var pool = new MemoryStream();
            int count = 0;
            foreach (int pid in Pids)
                Writes(0, pid, (_, page) =>
                {
                    if (count < MaxContentPages && page.IndexOfAnyExcept((byte)0) >= 0)
                    {
                        pool.Write(page);
                        count++;
                    }
                });
            if (count == 0)
                throw new ImageFormatException(Path, "trace", null, "holds no non-zero page to draw contents from");
            _contentPool = pool.ToArray();
            return _contentPool;
        }
    }
}

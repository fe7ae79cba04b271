using CriuSharp.ImageFormat;

namespace CriuSharp.Dumper;

/// <summary>
/// A history rebuilt from the parent chain on disk, for a <c>pre-dump</c> or <c>dump</c> run as a
/// process of its own (the CLI verbs), which has no memory of what earlier dumps sent:
/// <code>
///  parent/page-digests-PID.img ──▶ digests of the written pages the parent covers   (elision)
///  parent chain's pages ──PageReader──▶ bases of those pages, at most CacheBytes     (deltas)
///       (decompressing the blocks that hold them, following PE_PARENT and PE_DELTA)
/// </code>
/// The bases are exactly the bytes restore will rebuild the pages from, so a delta is taken
/// against what the destination has, whichever directory the parent is; nothing outlives the run
/// that could describe another chain. Each dump writes the digests of every page its pagemap
/// covers (page-digests-PID.img), so the next one can elide against it. A parent without
/// digests (dumped without them) leaves its pages unelidable unless their base was read:
/// <see cref="DeltaCounters.PagesNoDigest"/> counts them.
/// </summary>
public sealed partial class SentPages
{
    /// <summary>A history that each dump rebuilds from its parent chain (see the class remarks) instead of keeping it between dumps.</summary>
    public static SentPages FromImages(bool elide, long cacheBytes) => new(elide, cacheBytes) { FromChain = true };

    /// <summary>Rebuilt from the parent chain by every dump (<see cref="FromImages"/>).</summary>
    public bool FromChain { get; private init; }

    /// <summary>One task's parent chain as a source of page digests and delta bases.</summary>
    internal sealed class ChainSource(PageDigestMap? digests, PageReader? reader) : IDisposable
    {
        /// <summary>The parent's page-digests-PID.img; null if it has none.</summary>
        public PageDigestMap? Digests => digests;
        public PageReader? Reader => reader;
        public void Dispose() => reader?.Dispose();
    }

    /// <summary>
    /// Opens <paramref name="parent"/>'s digests of <paramref name="pid"/> and, with deltas on and
    /// <paramref name="readPages"/> (the chain's pages are on this machine), a reader of its pages.
    /// </summary>
    internal ChainSource OpenChain(ImageSet parent, int pid, bool readPages) =>
        new(parent.ReadPageDigests(pid), Delta && readPages && parent.HasPagemap(pid) ? parent.OpenPageReader(pid) : null);

    /// <summary>
    /// Forgets what it held and takes in, for each written page of <paramref name="written"/> that
    /// <paramref name="parentPagemap"/> covers, the digest the chain recorded and, while the cache
    /// has room (<see cref="CacheBytes"/>, in address order), the page's version in the chain as a
    /// delta base, with its share of the block that stores it. Returns the pages that stay without
    /// a digest (see <see cref="DeltaCounters.PagesNoDigest"/>), and the bytes of bases read.
    /// </summary>
    internal (ulong NoDigest, ulong BaseBytes) Seed(ChainSource src, int pid, PagemapImage parentPagemap, IEnumerable<(ulong Va, int Pages)> written)
    {
        // Once per batch of the pipe: the pages change, what the dump has learnt about deltas
        // so far (stored ratio, cut penalty, back-off) carries on to the next batch.
        ClearPages();
        ulong noDigest = 0, baseBytes = 0;
        const int ps = PageGeometry.PageSize;
        foreach (var (va0, pages) in written)
        {
            for (int i = 0; i < pages; i++)
            {
                ulong va = va0 + ((ulong)i << PageGeometry.PageShift);
                if (!PageSieve.Covers(parentPagemap, va))
                    continue;
                var key = (pid, va);
                ulong digest = 0;
                bool known = src.Digests?.TryGet(va, out digest) == true;
                if (src.Reader is { } reader && _used < _capacity)
                {
                    int slot = _used++;
                    var dst = _slots.AsSpan(slot * ps, ps);
                    reader.ReadPage(va, dst);
                    baseBytes += ps;
                    if (!known)
                    {
                        digest = PageDigest.Of(va, dst);
                        known = true;
                    }
                    _keyOf[slot] = key;
                    _slotOf[key] = slot;
                    _shares[slot] = (ushort)Math.Clamp(reader.StoredShare(va), 0, ushort.MaxValue);
                    PushFront(slot);
                }
                if (!Elide)
                    continue;
                if (known)
                    _digests[key] = digest;
                else
                    noDigest++;
            }
        }
        return (noDigest, baseBytes);
    }
}

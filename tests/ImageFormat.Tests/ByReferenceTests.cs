using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using CriuSharp.ImageFormat;

namespace CriuSharp.ImageFormat.Tests;

/// <summary>
/// Pages handed to the writer by reference (a dump's spliced frames) must give the same pages
/// file and pagemap as the same bytes handed over as a span, whatever the worker count, and the
/// page digests it reports must be those of <see cref="PageDigest"/>.
/// </summary>
public class ByReferenceTests
{
    private const ulong Base = 0x7f00_0000_0000;

    public static TheoryData<string, int> Stores => new()
    {
        { "lz4", 1 }, { "lz4", 2 }, { "lz4", 3 }, { "zstd", 2 }, { "none", 1 },
    };

    private static PageStoreOptions Store(string kind, int workers) => kind switch
    {
        "lz4" => PageStoreOptions.Lz4() with { Parallelism = workers },
        "zstd" => PageStoreOptions.Zstd() with { Parallelism = workers },
        _ => PageStoreOptions.Raw,
    };

    [Theory, MemberData(nameof(Stores))]
    public unsafe void ScatteredReferences_WriteWhatTheSpanWrites(string kind, int workers)
    {
        // 1,100 pages: several 2 MiB jobs, a partial last block, zero runs and random pages,
        // placed in memory out of order (every third page elsewhere) as frames are.
        const int pages = 1100;
        var data = TestImages.MixedPages(pages, 7);
        var frames = GC.AllocateArray<byte>(pages * 4096 + 4096, pinned: true);
        var addrs = new nint[pages];
        fixed (byte* f = frames)
        {
            for (int i = 0; i < pages; i++)
            {
                int slot = (i * 3) % pages; // a permutation: 3 and 1100 are coprime
                data.AsSpan(i * 4096, 4096).CopyTo(frames.AsSpan(slot * 4096));
                addrs[i] = (nint)(f + (long)slot * 4096);
            }
            var (byteFile, byteEntries, byteDigests) = Write(Store(kind, workers), w =>
            {
                w.AddPresent(Base, data.AsSpan(0, 600 * 4096));
                w.AddPresent(Base + 600 * 4096, data.AsSpan(600 * 4096));
            });
            var (refFile, refEntries, refDigests) = Write(Store(kind, workers), w =>
            {
                w.AddPresentByReference(Base, addrs.AsSpan(0, 600));
                w.AddPresentByReference(Base + 600 * 4096, addrs.AsSpan(600));
            });

            Assert.Equal(byteFile, refFile);
            Assert.Equal(byteDigests, refDigests);
            Assert.Equal(byteEntries, refEntries);
            var expected = new List<(ulong, ulong)>();
            for (int i = 0; i < pages; i++)
            {
                ulong d = PageDigest.Of(Base + (ulong)i * 4096, data.AsSpan(i * 4096, 4096));
                if (d != 0)
                    expected.Add((Base + (ulong)i * 4096, d));
            }
            Assert.Equal(expected, refDigests);
            Assert.Contains(data.Chunk(4096), p => p.All(b => b == 0)); // the sample has zero pages to leave out
        }
    }

    [Theory, MemberData(nameof(Stores))]
    public void FetchedPages_WriteWhatTheSpanWrites(string kind, int workers)
    {
        // The workers read each block themselves (a frozen task read with process_vm_readv):
        // same pages file, entries and digests as the bytes handed over as a span.
        const int pages = 1100;
        var data = TestImages.MixedPages(pages, 11);
        var (byteFile, byteEntries, byteDigests) = Write(Store(kind, workers), w =>
        {
            w.AddPresent(Base, data.AsSpan(0, 600 * 4096));
            w.AddPresent(Base + 600 * 4096, data.AsSpan(600 * 4096));
        });
        int fetches = 0, unaligned = 0;
        unsafe void Fetch(ulong va, Span<byte> dst)
        {
            Interlocked.Increment(ref fetches);
            // process_vm_readv copies into an unaligned buffer far more slowly (PageAlignedBuffer).
            if (((nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(dst)) & 4095) != 0)
                Interlocked.Increment(ref unaligned);
            data.AsSpan(checked((int)(va - Base)), dst.Length).CopyTo(dst);
        }
        var (fetchFile, fetchEntries, fetchDigests) = Write(Store(kind, workers), w =>
        {
            w.AddPresentByFetch(Base, 600, Fetch);
            w.AddPresentByFetch(Base + 600 * 4096, pages - 600, Fetch);
        });
        Assert.Equal(byteFile, fetchFile);
        Assert.Equal(byteEntries, fetchEntries);
        Assert.Equal(byteDigests, fetchDigests);
        Assert.True(fetches > 0);
        Assert.Equal(0, unaligned);
        // Up to 1 MiB (or the raw layout's 256 pages) per read, not one read per 64 KiB block.
        Assert.True(fetches <= 6, $"{fetches} reads for {pages} pages");
    }

    [Fact]
    public void FetchFailure_IsRethrownByTheWriter()
    {
        var w = new PagemapWriter(new MemoryStream(), 1, PageStoreOptions.Lz4() with { Parallelism = 2 });
        w.AddPresentByFetch(Base, 64, (va, dst) => throw new InvalidOperationException($"cannot read 0x{va:x}"));
        var e = Assert.Throws<InvalidOperationException>(() => w.Finish());
        Assert.Contains("cannot read", e.Message);
        w.Dispose();
    }

    [Fact]
    public void DigestMap_AddRange_IsAddPerPage_AndRunFindsWholeRunsOnly()
    {
        var byPage = new PageDigestMap();
        var byRange = new PageDigestMap();
        ulong[] first = [1, 2, 3, 4], second = [5, 6], third = [7, 8, 9];
        void AddEach(ulong va, ulong[] ds)
        {
            for (int i = 0; i < ds.Length; i++)
                byPage.Add(va + (ulong)i * 4096, ds[i]);
        }
        AddEach(Base, first);
        AddEach(Base + 4 * 4096, second); // adjacent: the same run
        AddEach(Base + 10 * 4096, third);
        byRange.AddRange(Base, first);
        byRange.AddRange(Base + 4 * 4096, second);
        byRange.AddRange(Base + 10 * 4096, third);
        Assert.Equal(byPage.ToEntries(), byRange.ToEntries());
        Assert.Throws<ArgumentException>(() => byRange.AddRange(Base + 11 * 4096, second));
        Assert.Equal([2UL, 3, 4, 5, 6], byRange.Run(Base + 4096, 5).ToArray());
        Assert.Equal([8UL, 9], byRange.Run(Base + 11 * 4096, 2).ToArray());
        Assert.True(byRange.Run(Base + 4 * 4096, 3).IsEmpty); // runs past the end of its run
        Assert.True(byRange.Run(Base + 8 * 4096, 1).IsEmpty); // not held
        Assert.True(byRange.Run(Base - 4096, 2).IsEmpty);
    }

    [Fact]
    public void DigestMap_TrySet_ReplacesOnlyPagesItHolds()
    {
        var map = new PageDigestMap();
        for (int i = 0; i < 4; i++)
            map.Add(Base + (ulong)i * 4096, 0);
        map.Add(Base + 10 * 4096, 5);
        Assert.True(map.TrySet(Base + 2 * 4096, 42));
        Assert.False(map.TrySet(Base + 5 * 4096, 7));
        Assert.True(map.TryGet(Base + 2 * 4096, out ulong d) && d == 42);
        Assert.True(map.TryGet(Base + 1 * 4096, out d) && d == 0);
        Assert.False(map.TryGet(Base + 5 * 4096, out _));
        // Round trip through the image entries keeps runs and values.
        var back = PageDigestMap.FromEntries(map.ToEntries().ToList(), "test");
        Assert.Equal(5, back.Count);
        Assert.True(back.TryGet(Base + 2 * 4096, out d) && d == 42);
        Assert.True(back.TryGet(Base + 10 * 4096, out d) && d == 5);
    }

    [Fact]
    public void OneBlockEntries_AreCompressedByTheWriter_NotHandedToWorkers()
    {
        // A pre-dump with scattered changed pages: one-page entries, a few short runs, then a
        // long run that the workers do take. Same bytes as one thread writes.
        var data = TestImages.MixedPages(700, 5);
        void Entries(PagemapWriter w)
        {
            for (int i = 0; i < 300; i += 3)
                w.AddPresent(Base + (ulong)i * 4096, data.AsSpan(i * 4096, 4096));
            w.AddPresent(Base + 400UL * 4096, data.AsSpan(400 * 4096, 16 * 4096));
        }
        int handed = -1;
        var (two, twoEntries, twoDigests) = Write(Store("lz4", 2), w =>
        {
            Entries(w);
            handed = w.JobsForWorkers;
            w.AddPresent(Base + 500UL * 4096, data.AsSpan(500 * 4096, 200 * 4096));
            Assert.True(w.JobsForWorkers > handed);
        });
        Assert.Equal(0, handed);
        var (one, oneEntries, oneDigests) = Write(Store("lz4", 1), w =>
        {
            Entries(w);
            w.AddPresent(Base + 500UL * 4096, data.AsSpan(500 * 4096, 200 * 4096));
        });
        Assert.Equal(102, twoEntries.Count);
        Assert.Equal(one, two);
        Assert.Equal(oneEntries, twoEntries);
        Assert.Equal(oneDigests, twoDigests);
    }

    [Fact]
    public unsafe void DisposedUnfinished_StopsItsWorkers_AndRefusesMorePages()
    {
        var data = GC.AllocateArray<byte>(8 << 20, pinned: true);
        new Random(1).NextBytes(data);
        fixed (byte* p = data)
        {
            var addrs = new nint[data.Length / 4096];
            for (int i = 0; i < addrs.Length; i++)
                addrs[i] = (nint)(p + (long)i * 4096);
            var ms = new MemoryStream();
            var w = new PagemapWriter(ms, 1, PageStoreOptions.Lz4() with { Parallelism = 2 }, leaveOpen: true);
            w.AddPresentByReference(Base, addrs); // queued: 4 jobs of 2 MiB
            var workers = w.WorkerThreads.ToList();
            Assert.Equal(2, workers.Count);
            w.Dispose(); // returns only once no worker can read the pages any more
            Assert.All(workers, t => Assert.False(t.IsAlive));
            Assert.ThrowsAny<Exception>(() => w.AddPresentByReference(Base + (ulong)data.Length, addrs.AsSpan(0, 32)));
        }
    }

    [Fact]
    public void Digest_IsZeroOnlyForZeroPages_AndDependsOnTheAddress()
    {
        var page = new byte[4096];
        Assert.Equal(0UL, PageDigest.Of(Base, page));
        page[4095] = 1;
        Assert.NotEqual(0UL, PageDigest.Of(Base, page));
        Assert.NotEqual(PageDigest.Of(Base, page), PageDigest.Of(Base + 4096, page));
    }

    [Fact]
    public void Digest_OnePass_AgreesWithTheZeroScanDefinition()
    {
        // Of hashes first and scans for zeros only when the hash is the zero page's; it must give
        // exactly the definition's value: 0 for zeros, OfNonZero otherwise, for every length.
        var rng = new Random(7);
        foreach (int len in new[] { 4096, 64, 8192 })
        {
            var page = new byte[len];
            Assert.Equal(0UL, PageDigest.Of(Base, page));
            for (int i = 0; i < 50; i++)
            {
                Array.Clear(page);
                page[rng.Next(len)] = (byte)rng.Next(1, 256);
                Assert.Equal(PageDigest.OfNonZero(Base, page), PageDigest.Of(Base, page));
            }
        }
    }

    private static (byte[] File, List<Images.pagemap_entry> Entries, List<(ulong, ulong)> Digests) Write(PageStoreOptions o, Action<PagemapWriter> add)
    {
        var ms = new MemoryStream();
        var digests = new List<(ulong, ulong)>();
        using var w = new PagemapWriter(ms, 1, o, leaveOpen: true) { OnPageDigest = (va, d) => digests.Add((va, d)) };
        add(w);
        w.Finish();
        return (ms.ToArray(), w.Entries.Select(e => e.Clone()).ToList(), digests);
    }
}

public class XxHashDispatchTests
{
    [Fact]
    public unsafe void DispatchedXxh3_EqualsTheBaselineEntryPoint_AtEverySizeClass()
    {
        var rnd = new Random(3);
        var data = new byte[70_000];
        rnd.NextBytes(data);
        fixed (byte* p = data)
            foreach (int n in new[] { 0, 1, 3, 4, 8, 16, 17, 128, 129, 240, 241, 1024, 4096, 65536, 70_000 })
            {
                Assert.Equal(Interop.XxHash.Xxh3_64Plain(p, (nuint)n), Interop.XxHash.Xxh3_64(p, (nuint)n));
                // The managed fallback (System.IO.Hashing) is the same function.
                Assert.Equal(Interop.XxHash.Xxh3_64(p, (nuint)n), System.IO.Hashing.XxHash3.HashToUInt64(data.AsSpan(0, n)));
            }
        // XXH3-64 of the empty input is a published constant (xxHash's sanity checks).
        Assert.Equal(0x2D06800538D394C2UL, BlockCodec.Checksum([]));
    }
}

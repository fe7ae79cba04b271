using System.Diagnostics;
using System.Text.Json;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.ImageFormat.Images;
using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Machine;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// A file unlinked while mapped (criu/files-reg.c ghost files): its bytes travel in
/// ghost-file-ID.img, remap-fpath.img links the reg file to it, and restore recreates it, maps it
/// and unlinks it again, so the mappings show " (deleted)" with the bytes of dump time.
/// </summary>
public class GhostFileTests
{
    private const string Path0 = "/tmp/ghost-data";

    private static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    /// <summary>A task mapping <see cref="Path0"/> privately and shared (4 pages each), written through both, then the file unlinked.</summary>
    private static (SimTask Task, ulong Private, ulong Shared) GhostTask(Kernel k, int pid, byte[] contents)
    {
        var t = k.Spawn("ghost", pid);
        ulong ps = (ulong)k.Arch.PageSize;
        var f = k.Fs.Create(Path0, contents);
        var priv = t.Mmap(0, 4 * ps, Prot.Read | Prot.Write, MapFlags.Private, f);
        var shared = t.Mmap(0, 4 * ps, Prot.Read | Prot.Write, MapFlags.Shared, f);
        Assert.True(priv.Ok && shared.Ok);
        Assert.True(t.StoreU64((ulong)priv.Value + 8, 0x1111_2222_3333_4444));          // COW: the task's own page
        Assert.True(t.StoreU64((ulong)shared.Value + ps + 16, 0x5555_6666_7777_8888)); // into the file's page cache
        Assert.True(k.Fs.Unlink(Path0).Ok);
        Assert.Contains(Path0 + " (deleted)", k.Proc.Maps(pid));
        return (t, (ulong)priv.Value, (ulong)shared.Value);
    }

    /// <summary>The bytes of the file behind the mapping at <paramref name="va"/>, read through map_files.</summary>
    private static byte[] FileBytes(Kernel k, int pid, ulong va)
    {
        var api = new ClockOnlyHost(k).AsKernelApi();
        Assert.True(api.StatMapFiles(pid, va, out var st).Ok);
        var b = new byte[st.Size];
        Assert.Equal(st.Size, api.ReadMapFiles(pid, va, 0, b).Value);
        return b;
    }

    /// <summary>The maps lines of the unlinked file, without the inode (a new machine numbers its inodes afresh).</summary>
    private static string[] DeletedLines(Kernel k, int pid) =>
        k.Proc.Maps(pid).Split('\n').Where(l => l.EndsWith(Path0 + " (deleted)", StringComparison.Ordinal))
            .Select(l => string.Join(' ', l.Split(' ', StringSplitOptions.RemoveEmptyEntries) is var f ? [.. f[..4], .. f[5..]] : []))
            .ToArray();

    [Fact]
    public void UnlinkedFile_MappedPrivateAndShared_RestoresDeletedWithItsBytes()
    {
        var k = RoundTrip.NewKernel();
        int ps = k.Arch.PageSize;
        var contents = Pattern(3 * ps + 100, 7);
        var (_, _, shared) = GhostTask(k, 1200, contents);
        var atDump = FileBytes(k, 1200, shared);
        Assert.NotEqual(contents, atDump); // the shared store reached the file
        var expected = RoundTrip.Snapshot(k, 1200);
        var before = DeletedLines(k, 1200);
        Assert.Equal(2, before.Length);

        var dir = RoundTrip.NewDir("ghost");
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 1200, ImagesDir = dir });

        var set = ImageSet.Open(dir);
        var remap = Assert.Single(set.ReadRemapFpath());
        Assert.Equal(remap_type.Ghost, remap.RemapType);
        Assert.Equal(1u, remap.RemapId);
        var reg = set.ReadFiles().Single(f => f.Id == remap.OrigId).Reg;
        Assert.Equal(Path0, reg.Name);
        Assert.Equal((ulong)atDump.Length, reg.Size);
        var (gfe, bytes) = set.ReadGhostFile(1);
        Assert.Equal(atDump, bytes);
        Assert.Equal(0x81A4u, gfe.Mode);
        Assert.False(gfe.Chunks);
        Assert.True(File.Exists(Path.Combine(dir, "ghost-file-1.img")));

        var dest = new Kernel(k.Config);
        var destApi = new ClockOnlyHost(dest).AsKernelApi();
        Criu.Restore(destApi, new RestoreOptions { ImagesDir = dir });
        RoundTrip.AssertSame(expected, dest);
        Assert.Equal(before, DeletedLines(dest, 1200));
        // No name is left behind: neither the original path nor CRIU's temporary one.
        Assert.Null(dest.Fs.Lookup(Path0));
        Assert.Null(dest.Fs.Lookup(Path0 + ".cr.1.ghost"));
        // Both mappings are of one file again, with no link, holding the bytes of dump time.
        Assert.True(destApi.StatMapFiles(1200, shared, out var st).Ok);
        Assert.Equal(0u, st.Nlink);
        Assert.Equal(atDump, FileBytes(dest, 1200, shared));
        var privStart = ulong.Parse(before[0][..before[0].IndexOf('-')], System.Globalization.NumberStyles.HexNumber);
        Assert.True(destApi.StatMapFiles(1200, privStart, out var st2).Ok);
        Assert.Equal(st.Inode, st2.Inode);
    }

    [Fact]
    public void PreDumpChain_FileUnlinkedBetweenPreDumps_Restores()
    {
        var k = RoundTrip.NewKernel();
        int ps = k.Arch.PageSize;
        var t = k.Spawn("ghost", 1300);
        ulong anon = Procs.Map(t, 8);
        Procs.Fill(t, anon, 8, 3);
        var f = k.Fs.Create(Path0, Pattern(4 * ps, 9));
        ulong priv = (ulong)t.Mmap(0, 4 * (ulong)ps, Prot.Read | Prot.Write, MapFlags.Private, f).Value;
        ulong shared = (ulong)t.Mmap(0, 4 * (ulong)ps, Prot.Read | Prot.Write, MapFlags.Shared, f).Value;
        Assert.True(t.StoreU64(priv, 1));
        byte[]? atDump = null;
        var (steps, _, dest) = RoundTrip.DumpRestore(new ClockOnlyHost(k), 1300, preDumps: 2, PageStoreOptions.Raw, between: i =>
        {
            if (i == 0)
                Assert.True(k.Fs.Unlink(Path0).Ok);
            Assert.True(t.StoreU64(priv + (ulong)(i + 1) * (ulong)ps, 0xAB00u + (ulong)i));
            Assert.True(t.StoreU64(shared + (ulong)i * (ulong)ps + 8, 0xCD00u + (ulong)i));
            Procs.Touch(t, anon + (ulong)i * (ulong)ps, 0xEF00u + (ulong)i);
            atDump = FileBytes(k, 1300, shared);
        });
        Assert.Equal(3, steps.Count);
        Assert.Equal(2, DeletedLines(dest, 1300).Length);
        Assert.Equal(atDump, FileBytes(dest, 1300, shared));
    }

    [Fact]
    public void LargeGhostFile_IsRefusedOverTheLimit_AndStoredInChunksUnderALargerOne()
    {
        var k = RoundTrip.NewKernel();
        int size = (int)GhostFile.ChunksThreshold + 3 * 4096 + 10;
        var contents = Pattern(size, 11);
        Array.Clear(contents, 8192, 3 * 4096); // a hole: pages 2-4 all zero
        var (_, _, shared) = GhostTask(k, 1400, contents);
        var expected = RoundTrip.Snapshot(k, 1400);
        var atDump = FileBytes(k, 1400, shared);
        var api = new ClockOnlyHost(k).AsKernelApi();

        var refused = Assert.Throws<DumperException>(() =>
            Criu.Dump(api, new DumpOptions { Pid = 1400, ImagesDir = RoundTrip.NewDir("ghost-limit"), LeaveRunning = true }));
        Assert.Contains("ghost file limit", refused.Message);

        var dir = RoundTrip.NewDir("ghost-chunks");
        Criu.Dump(api, new DumpOptions { Pid = 1400, ImagesDir = dir, GhostLimit = 4 << 20 });
        var (gfe, bytes) = ImageSet.Open(dir).ReadGhostFile(1);
        Assert.True(gfe.Chunks);
        Assert.Equal((ulong)size, gfe.Size);
        Assert.Equal(atDump, bytes);
        // The zero pages are not stored: the image is smaller than the file.
        Assert.True(new FileInfo(Path.Combine(dir, "ghost-file-1.img")).Length < size);

        var dest = new Kernel(k.Config);
        Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = dir });
        RoundTrip.AssertSame(expected, dest);
        Assert.Equal(atDump, FileBytes(dest, 1400, shared));
    }

    [Fact]
    public void Restore_RefusesWhenTheOriginalNameExists_AndLeavesNoGhostBehind()
    {
        var k = RoundTrip.NewKernel();
        GhostTask(k, 1500, Pattern(2 * k.Arch.PageSize, 5));
        var dir = RoundTrip.NewDir("ghost-exists");
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 1500, ImagesDir = dir });
        var dest = new Kernel(k.Config);
        dest.Fs.Create(Path0, [1, 2, 3]);
        var ex = Assert.Throws<DumperException>(() => Criu.Restore(new ClockOnlyHost(dest).AsKernelApi(), new RestoreOptions { ImagesDir = dir }));
        Assert.Contains("exists on the destination", ex.Message);
        Assert.Null(dest.Fs.Lookup(Path0 + ".cr.1.ghost"));
        Assert.Equal(3, dest.Fs.Lookup(Path0)!.Size);
    }

    private static (int Code, string Out) Crit(params string[] args)
    {
        var psi = new ProcessStartInfo("/usr/bin/crit", args) { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        string o = p.StandardOutput.ReadToEnd();
        string e = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, p.ExitCode == 0 ? o : o + e);
    }

    [Fact]
    public void Crit_DecodesGhostFileAndRemapImages()
    {
        Assert.True(File.Exists("/usr/bin/crit"), "/usr/bin/crit is missing: install Debian's criu package (run-tests.sh does)");
        var k = RoundTrip.NewKernel();
        var (_, _, shared) = GhostTask(k, 1600, Pattern(2 * k.Arch.PageSize + 7, 13));
        var atDump = FileBytes(k, 1600, shared);
        var dir = RoundTrip.NewDir("ghost-crit");
        Criu.Dump(new ClockOnlyHost(k).AsKernelApi(), new DumpOptions { Pid = 1600, ImagesDir = dir, LeaveRunning = true });

        var (code, o) = Crit("decode", "-i", Path.Combine(dir, "remap-fpath.img"));
        Assert.True(code == 0, o);
        using (var doc = JsonDocument.Parse(o))
        {
            Assert.Equal("REMAP_FPATH", doc.RootElement.GetProperty("magic").GetString());
            var e = Assert.Single(doc.RootElement.GetProperty("entries").EnumerateArray());
            Assert.Equal("GHOST", e.GetProperty("remap_type").GetString());
            Assert.Equal(1, e.GetProperty("remap_id").GetInt32());
        }
        (code, o) = Crit("decode", "-i", Path.Combine(dir, "ghost-file-1.img"));
        Assert.True(code == 0, o);
        using (var doc = JsonDocument.Parse(o))
        {
            Assert.Equal("GHOST_FILE", doc.RootElement.GetProperty("magic").GetString());
            var e = Assert.Single(doc.RootElement.GetProperty("entries").EnumerateArray());
            Assert.Equal(0x81A4, e.GetProperty("mode").GetInt32());
            Assert.Equal(atDump, Convert.FromBase64String(e.GetProperty("extra").GetString()!.Replace("\n", "")));
        }

        // The chunked form too (a file of at least 1 MiB, under a raised limit).
        var k2 = RoundTrip.NewKernel();
        var big = Pattern((int)GhostFile.ChunksThreshold + 4096, 17);
        Array.Clear(big, 0, 8192);
        GhostTask(k2, 1601, big);
        var dir2 = RoundTrip.NewDir("ghost-crit-chunks");
        Criu.Dump(new ClockOnlyHost(k2).AsKernelApi(), new DumpOptions { Pid = 1601, ImagesDir = dir2, GhostLimit = 2 << 20 });
        (code, o) = Crit("decode", "-i", Path.Combine(dir2, "ghost-file-1.img"));
        Assert.True(code == 0, o);
        using (var doc = JsonDocument.Parse(o))
        {
            var entries = doc.RootElement.GetProperty("entries").EnumerateArray().ToList();
            Assert.True(entries[0].GetProperty("chunks").GetBoolean());
            var chunk = Assert.Single(entries.Skip(1));
            // Page 0 stayed zero (a hole); page 1 got the shared store, so the data starts there.
            Assert.Equal(4096, chunk.GetProperty("off").GetInt64());
            Assert.Equal(big.Length - 4096, chunk.GetProperty("len").GetInt64());
        }
    }
}

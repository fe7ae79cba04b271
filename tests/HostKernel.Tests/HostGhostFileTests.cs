using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.ImageFormat.Images;
using CriuSharp.KernelApi;

namespace CriuSharp.HostKernel.Tests;

/// <summary>
/// A real process's file unlinked while mapped: the dump reads it through
/// /proc/PID/map_files and writes ghost-file-1.img and remap-fpath.img, as CRIU does.
/// </summary>
public sealed class HostGhostFileTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("criu-sharp-hostghost-").FullName;

    public void Dispose() => Directory.Delete(_root, true);

    [Fact]
    public void Dump_WritesTheUnlinkedFile_AsAGhost()
    {
        string path = Path.Combine(_root, "data.bin");
        var contents = new byte[3 * 4096 + 123];
        new Random(21).NextBytes(contents);
        File.WriteAllBytes(path, contents);
        using var c = RealChild.Start(Programs.Ghost, path);
        var ready = c.ReadLine().Split(' ');
        Assert.Equal("ready", ready[0]);
        Assert.False(File.Exists(path));
        ulong shared = ulong.Parse(ready[1].AsSpan(2), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
        contents[4096] = 0x5A; // the program's store through its shared mapping

        using var host = new LinuxHost();
        Assert.True(host.StatMapFiles(c.Pid, shared, out var st).Ok);
        Assert.Equal(0u, st.Nlink);
        Assert.True(st.IsRegular);
        Assert.Equal(contents.Length, st.Size);

        string dir = Path.Combine(_root, "dump");
        Criu.Dump(host, new DumpOptions { Pid = c.Pid, ImagesDir = dir, LeaveRunning = true, Tracker = TrackerKind.Content, AutoFallback = TrackerKind.Content });
        Assert.True(c.Alive);
        var set = ImageSet.Open(dir);
        var remap = Assert.Single(set.ReadRemapFpath());
        Assert.Equal(remap_type.Ghost, remap.RemapType);
        Assert.Equal(path, set.ReadFiles().Single(f => f.Id == remap.OrigId).Reg.Name);
        var (gfe, bytes) = set.ReadGhostFile(remap.RemapId);
        Assert.Equal(contents, bytes);
        Assert.Equal(st.Mode, gfe.Mode);
        Assert.Equal(st.Inode, gfe.Ino);
        // A restore into a simulated machine recreates it from the images: not imported from the host.
        Assert.DoesNotContain(Criu.RealHostFiles(dir), f => f.Path == path);
    }
}

using CriuSharp.SimKernel.Mm;
using Xunit;

namespace CriuSharp.SimKernel.Tests;

/// <summary>link(2)/unlink(2) on the simulated filesystem: a mapped file is "(deleted)" only once its last name is gone.</summary>
public class FileLinkTests
{
    [Fact]
    public void MappedFile_WithTwoNames_IsDeletedOnlyWhenBothAreGone()
    {
        var k = new Kernel(new KernelConfig { Arch = Arch.ArchProfile.Parse("x86_64"), Version = KernelVersion.Parse("modern"), MemoryBytes = 64L << 20 });
        var t = k.Spawn("links", 100);
        var f = k.Fs.Create("/a.cr.1.ghost", [1, 2, 3]);
        Assert.Equal(Errno.None, k.Fs.Link("/a.cr.1.ghost", "/a").Error);
        Assert.Equal(Errno.EEXIST, k.Fs.Link("/a.cr.1.ghost", "/a").Error);
        Assert.Equal(Errno.ENOENT, k.Fs.Link("/missing", "/b").Error);
        Assert.Equal(2, k.Fs.Links(f));
        Assert.True(t.Mmap(0, 4096, Prot.Read, MapFlags.Private, k.Fs.Lookup("/a")).Ok);
        Assert.True(k.Fs.Unlink("/a").Ok);
        Assert.Equal(1, k.Fs.Links(f));
        Assert.False(f.Unlinked);
        Assert.True(k.Fs.Unlink("/a.cr.1.ghost").Ok);
        Assert.Equal(0, k.Fs.Links(f));
        Assert.True(f.Unlinked);
        // maps shows the name the file was last linked under, now deleted.
        Assert.EndsWith("/a (deleted)", k.Proc.Maps(100).Split('\n').First(l => l.Contains("/a", StringComparison.Ordinal)));
        Assert.Equal(Errno.ENOENT, k.Fs.Unlink("/a").Error);
    }
}

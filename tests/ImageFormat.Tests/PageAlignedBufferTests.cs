using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat.Tests;

public class PageAlignedBufferTests
{
    private static unsafe nint Address(ArraySegment<byte> s) => (nint)Unsafe.AsPointer(ref MemoryMarshal.GetReference(s.AsSpan()));

    [Theory]
    [InlineData(1)]
    [InlineData(4096)]
    [InlineData(65536)]
    [InlineData(1 << 20)]
    [InlineData(4 << 20)]
    public void Allocate_GivesAPageAlignedSliceOfTheSize_ThatStaysPut(int bytes)
    {
        var segments = Enumerable.Range(0, 8).Select(_ => PageAlignedBuffer.Allocate(bytes)).ToList();
        var before = segments.Select(Address).ToList();
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        foreach (var (s, at) in segments.Zip(before))
        {
            Assert.Equal(bytes, s.Count);
            Assert.Equal(0, at & 4095);
            Assert.Equal(at, Address(s)); // pinned: a compacting GC does not move it
            Assert.True(s.Offset + s.Count <= s.Array!.Length);
        }
    }
}

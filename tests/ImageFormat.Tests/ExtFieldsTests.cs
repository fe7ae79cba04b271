using CriuSharp.ImageFormat.Images;
using Google.Protobuf;

namespace CriuSharp.ImageFormat.Tests;

public class ExtFieldsTests
{
    [Fact]
    public void PagemapEntrySplit_EqualsTheReflectiveSplit()
    {
        var rng = new Random(11);
        for (int i = 0; i < 500; i++)
        {
            var e = new pagemap_entry { Vaddr = (ulong)rng.NextInt64(1, 1L << 40) << 12, NrPages = (uint)rng.Next(1, 5000) };
            if (rng.Next(2) == 0) e.Flags = (uint)rng.Next(1, 16);
            if (rng.Next(3) == 0) e.InParent = true;
            if (rng.Next(2) == 0) e.NrPages64 = e.NrPages;
            if (rng.Next(3) == 0) e.ZeroPages = ByteString.CopyFrom([(byte)rng.Next(256), 1]);
            if (rng.Next(4) == 0) e.RawBlocks = ByteString.CopyFrom([(byte)rng.Next(256)]);
            for (int k = rng.Next(4); k > 0; k--) e.BlockSizes.Add((uint)rng.Next(1, 70000));
            for (int k = rng.Next(4); k > 0; k--) e.BlockChecksums.Add((ulong)rng.NextInt64());
            for (int k = rng.Next(3); k > 0; k--) e.DeltaSizes.Add((uint)rng.Next(1, 4096));
            for (int k = rng.Next(3); k > 0; k--) e.DeltaChecksums.Add((ulong)rng.NextInt64());
            var (criu, ext) = ExtFields.SplitPagemapEntry(e);
            Assert.Equal(ExtFields.CriuOnly(e).ToByteString(), criu.ToByteString());
            Assert.Equal(ExtFields.ExtOnly(e)?.ToByteString(), ext?.ToByteString());
        }
    }

    [Fact]
    public void PagemapEntrySplit_KnowsEveryFieldOfOurs()
    {
        // A field added to pagemap.proto at 1000 or above must be moved by SplitPagemapEntry too.
        var ours = pagemap_entry.Descriptor.Fields.InFieldNumberOrder().Select(f => f.FieldNumber).Where(n => n >= ExtFields.FirstNumber);
        Assert.Equal(ours.Order(), ExtFields.PagemapEntryExtNumbers.Order());
    }
}

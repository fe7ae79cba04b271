using System.Buffers.Binary;
using System.Text;

namespace CriuSharp.Migration.Tests;

/// <summary>The control connection of migrate --transport tcp: framing, and what a peer may not make it do.</summary>
public sealed class MigrationChannelTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "criu-sharp-channel-" + Guid.NewGuid().ToString("N"));

    public MigrationChannelTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void RequestWithFiles_RoundTrips()
    {
        string a = Path.Combine(_dir, "a.img");
        File.WriteAllBytes(a, [1, 2, 3, 4, 5]);
        var wire = new MemoryStream();
        var tx = new MigrationChannel(wire);
        tx.Send(new ControlRequest { Cmd = "images", Index = 3, Files = [new FileEntry("core-1000.img", 5)] }, [("core-1000.img", a)]);
        Assert.Equal(wire.Length, tx.BytesSent);
        wire.Position = 0;
        var rx = new MigrationChannel(wire);
        var r = rx.Receive<ControlRequest>();
        Assert.Equal("images", r.Cmd);
        Assert.Equal(3, r.Index);
        string into = Path.Combine(_dir, "into");
        Directory.CreateDirectory(into);
        Assert.Equal(5, rx.ReceiveFiles(r.Files!, into, 1 << 20));
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5 }, File.ReadAllBytes(Path.Combine(into, "core-1000.img")));
        Assert.Equal(tx.BytesSent, rx.BytesReceived);
    }

    [Theory]
    [InlineData("../escape.img")]
    [InlineData("/etc/passwd")]
    [InlineData(".criu-sharp-incomplete")]
    [InlineData("")]
    public void FileNamesThatLeaveTheDirectory_AreRefused(string name)
    {
        var wire = new MemoryStream(new byte[16]);
        var rx = new MigrationChannel(wire);
        var e = Assert.Throws<MigrationTransportException>(() => rx.ReceiveFiles([new FileEntry(name, 16)], _dir, 1 << 20));
        Assert.Contains("file name", e.Message);
        Assert.Empty(Directory.EnumerateFileSystemEntries(_dir));
    }

    [Fact]
    public void FilesBeyondTheBound_AreRefusedBeforeAnyByteIsRead()
    {
        var wire = new MemoryStream(new byte[16]);
        var rx = new MigrationChannel(wire);
        Assert.Throws<MigrationTransportException>(() => rx.ReceiveFiles([new FileEntry("pages-1.img", 1L << 40)], _dir, 1 << 20));
        Assert.Equal(0, wire.Position);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(MigrationChannel.MaxJsonBytes + 1u)]
    [InlineData(uint.MaxValue)]
    public void FrameLengthOutOfBounds_IsRefusedWithoutAllocating(uint length)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(b, length);
        var e = Assert.Throws<MigrationTransportException>(() => new MigrationChannel(new MemoryStream(b)).Receive<ControlRequest>());
        Assert.Contains("not a criu-sharp migration peer", e.Message);
    }

    [Fact]
    public void TruncatedOrMalformedFrames_AreOneTransportError()
    {
        Assert.Throws<MigrationTransportException>(() => new MigrationChannel(new MemoryStream([5, 0])).Receive<ControlRequest>());
        var json = Encoding.UTF8.GetBytes("{\"cmd\": ");
        var b = new byte[4 + json.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)json.Length);
        json.CopyTo(b, 4);
        Assert.Throws<MigrationTransportException>(() => new MigrationChannel(new MemoryStream(b)).Receive<ControlRequest>());
    }
}

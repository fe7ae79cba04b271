using System.Buffers.Binary;
using System.Text.Json;
using System.Text.Json.Serialization;
using CriuSharp.Dumper;
using CriuSharp.ImageFormat;
using CriuSharp.SimKernel.Workloads;

namespace CriuSharp.Migration;

/// <summary>
/// The control connection between <c>migrate --transport tcp</c> (the source) and
/// <c>migrate-service</c> (the destination), in the role of P.Haul's RPC channel between p.haul and
/// p.haul-service (phaul/xem_rpc.py: JSON requests, one answer each). Pages never travel here: they
/// go through the page server (CRIU's page-xfer protocol) the destination starts on request, and,
/// for post-copy, through the source's lazy page server. This channel carries the requests, the
/// non-page images (P.Haul copies them after each dump) and the source's regular files (P.Haul's
/// shared-storage assumption, made explicit).
/// <code>
///  frame:   u32 length (little endian) │ UTF-8 JSON object of that length │ payload
///  payload: the files the JSON lists ("files": [{name, size}]), their bytes back to back
/// </code>
/// </summary>
internal sealed class MigrationChannel(Stream stream) : IDisposable
{
    /// <summary>A frame's JSON never needs more; a larger length is a broken or foreign peer.</summary>
    public const int MaxJsonBytes = 1 << 20;

    /// <summary>Version of the requests below; the destination refuses another.</summary>
    public const int ProtocolVersion = 1;

    private static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>Bytes written and read on this connection, framing and payloads included.</summary>
    public long BytesSent { get; private set; }
    public long BytesReceived { get; private set; }

    public void Send<T>(T message, IReadOnlyList<(string Name, string Path)>? files = null)
    {
        var json = JsonSerializer.SerializeToUtf8Bytes(message, Json);
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(len, (uint)json.Length);
        stream.Write(len);
        stream.Write(json);
        BytesSent += 4 + json.Length;
        if (files is not null)
        {
            var buf = new byte[1 << 20];
            foreach (var (_, path) in files)
            {
                using var f = File.OpenRead(path);
                int n;
                while ((n = f.Read(buf)) > 0)
                {
                    stream.Write(buf, 0, n);
                    BytesSent += n;
                }
            }
        }
        stream.Flush();
    }

    public T Receive<T>()
    {
        Span<byte> len = stackalloc byte[4];
        try
        {
            stream.ReadExactly(len);
        }
        catch (EndOfStreamException e)
        {
            throw new MigrationTransportException("the peer closed the control connection", e);
        }
        uint n = BinaryPrimitives.ReadUInt32LittleEndian(len);
        if (n == 0 || n > MaxJsonBytes)
            throw new MigrationTransportException($"control message of {n} bytes: not a criu-sharp migration peer");
        var json = new byte[n];
        try
        {
            stream.ReadExactly(json);
        }
        catch (EndOfStreamException e)
        {
            throw new MigrationTransportException("the peer closed the control connection in the middle of a message", e);
        }
        BytesReceived += 4 + n;
        try
        {
            return JsonSerializer.Deserialize<T>(json, Json) ?? throw new MigrationTransportException("empty control message");
        }
        catch (JsonException e)
        {
            throw new MigrationTransportException($"malformed control message: {e.Message}", e);
        }
    }

    /// <summary>
    /// Reads the payload of <paramref name="files"/> into <paramref name="dir"/>, each file written
    /// atomically. Names must be plain image file names (no directories, nothing hidden), so a peer
    /// can never write outside the directory.
    /// </summary>
    public long ReceiveFiles(IReadOnlyList<FileEntry> files, string dir, long maxBytes)
    {
        long total = 0;
        var buf = new byte[1 << 20];
        foreach (var f in files)
        {
            if (!IsPlainName(f.Name))
                throw new MigrationTransportException($"refused file name '{f.Name}': only plain image file names are accepted");
            if (f.Size < 0 || f.Size > maxBytes - total)
                throw new MigrationTransportException($"file {f.Name} of {f.Size} bytes exceeds the {maxBytes}-byte bound of one request");
            total += f.Size;
            AtomicFile.Write(Path.Combine(dir, f.Name), s =>
            {
                long left = f.Size;
                while (left > 0)
                {
                    int part = (int)Math.Min(buf.Length, left);
                    try
                    {
                        stream.ReadExactly(buf, 0, part);
                    }
                    catch (EndOfStreamException e)
                    {
                        throw new MigrationTransportException($"the peer closed the control connection while sending {f.Name}", e);
                    }
                    s.Write(buf, 0, part);
                    left -= part;
                }
            });
        }
        BytesReceived += total;
        return total;
    }

    /// <summary>Reads a payload of exactly <paramref name="dest"/>'s length.</summary>
    public void ReceiveExactly(Span<byte> dest)
    {
        try
        {
            stream.ReadExactly(dest);
        }
        catch (EndOfStreamException e)
        {
            throw new MigrationTransportException("the peer closed the control connection in the middle of a payload", e);
        }
        BytesReceived += dest.Length;
    }

    private static bool IsPlainName(string name) =>
        name.Length is > 0 and < 256 && !name.StartsWith('.') && name.IndexOfAny(['/', '\\', '\0']) < 0;

    public void Dispose() => stream.Dispose();
}

/// <summary>The control connection broke, the peer refused a request, or it spoke something else.</summary>
public sealed class MigrationTransportException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A file that follows a control message.</summary>
internal sealed record FileEntry(string Name, long Size);

/// <summary>The simulated kernel the destination boots: the source's configuration, by name.</summary>
internal sealed record KernelSpec(string Arch, string Version, long MemoryBytes, long SwapBytes, int Thp, bool ThpUseZeroPage, long HugePages)
{
    public static KernelSpec Of(SimKernel.KernelConfig c) =>
        new(c.Arch.Name, c.Version.Name, c.MemoryBytes, c.SwapBytes, (int)c.Thp, c.ThpUseZeroPage, c.HugePages);

    public SimKernel.KernelConfig ToConfig() => new()
    {
        Arch = SimKernel.Arch.ArchProfile.Parse(Arch),
        Version = SimKernel.KernelVersion.Parse(Version),
        MemoryBytes = MemoryBytes,
        SwapBytes = SwapBytes,
        Thp = (SimKernel.ThpMode)Thp,
        ThpUseZeroPage = ThpUseZeroPage,
        HugePages = HugePages,
    };
}

/// <summary>
/// A request from the source. <c>cmd</c> is one of:
/// hello (kernel, page store, preload, cost figures) · page_server (index, parent: start a page
/// server for images directory INDEX, answer its port) · images (index, files: the dump's other
/// images; answer what the page server received) · fs (files: the source's regular files, by path) ·
/// restore (index, lazy, clocks, the source's lazy page server) · close.
/// </summary>
internal sealed record ControlRequest
{
    public required string Cmd { get; init; }
    public int Version { get; init; }
    public int Index { get; init; }
    public string? Parent { get; init; }
    public KernelSpec? Kernel { get; init; }
    public string? Compression { get; init; }
    public int BlockPages { get; init; }
    public bool Preload { get; init; }
    /// <summary>hello: the migration's mode (precopy, postcopy, hybrid), for the warm-up.</summary>
    public string? Mode { get; init; }
    /// <summary>hello: run a tiny migration of that mode before answering (<see cref="CodeWarmup"/>).</summary>
    public bool WarmUp { get; init; }
    /// <summary>hello: the source's elision and delta settings, for the warm-up.</summary>
    public bool ElideUnchanged { get; init; }
    public long DeltaCacheBytes { get; init; }
    public double DecompressBytesPerSecond { get; init; }
    public double CopyBytesPerSecond { get; init; }
    public IReadOnlyList<FileEntry>? Files { get; init; }
    /// <summary>fs: each file's path in the simulated filesystem, in the order of <see cref="Files"/>.</summary>
    public IReadOnlyList<string>? Paths { get; init; }
    public bool Lazy { get; init; }
    /// <summary>images: the final dump's (not pre-loaded: the restore applies it).</summary>
    public bool Final { get; init; }
    /// <summary>The source's virtual clock when the destination may resume the tree.</summary>
    public ulong ArrivalNs { get; init; }
    public ulong ContinueNs { get; init; }
    public string? LazyAddress { get; init; }
    public int LazyPort { get; init; }
    public int TimeoutSeconds { get; init; }
}

/// <summary>The destination's answer; <see cref="Error"/> set means the request failed.</summary>
internal sealed record ControlReply
{
    public string? Error { get; init; }
    public int Port { get; init; }
    public string? ImagesRoot { get; init; }
    public string? Machine { get; init; }
    /// <summary>hello: wall-clock time of the destination's warm-up (0 when none ran).</summary>
    public ulong WarmUpNs { get; init; }
    /// <summary>images: what the page server session received (page bytes as on the wire, block framing included).</summary>
    public long PageBytesReceived { get; init; }
    public ulong PagesWritten { get; init; }
    public ulong PagesInParent { get; init; }
    public long FilesBytes { get; init; }
    /// <summary>images: the pagemaps the page server wrote, sent back after the reply (see <see cref="MigrationService"/>).</summary>
    public IReadOnlyList<FileEntry>? Files { get; init; }
    /// <summary>Where the files of <see cref="Files"/> are read from (the sender's side only).</summary>
    [JsonIgnore]
    public IReadOnlyList<(string Name, string Path)>? ReplyFiles { get; init; }
    public DestinationRestore? Restore { get; init; }
}

/// <summary>What the destination measured and checked in its restore.</summary>
internal sealed record DestinationRestore
{
    /// <summary>Wall-clock time of the restore (reading the images, rebuilding the tree).</summary>
    public ulong RestoreWallNs { get; init; }
    /// <summary>Of <see cref="RestoreWallNs"/>, the restoring thread's .NET JIT compilation time.</summary>
    public ulong JitNs { get; init; }
    public RestoreStats? Stats { get; init; }
    public string? Error { get; init; }
    public int VmasVerified { get; init; }
    public IReadOnlyList<VerifyReport> AfterRestore { get; init; } = [];
    public IReadOnlyList<VerifyReport> AfterContinue { get; init; } = [];
    public IReadOnlyList<string> Warnings { get; init; } = [];
    public MeasuredPostCopy? PostCopy { get; init; }
}

/// <summary>The lazy restore as the destination measured it on the wall clock.</summary>
internal sealed record MeasuredPostCopy
{
    public required LazyPagesStats Stats { get; init; }
    public long LazyPages { get; init; }
    /// <summary>Wall-clock time from the tree resuming until the last lazy page arrived.</summary>
    public ulong LastPageWallNs { get; init; }
    public string? Error { get; init; }
}

using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

/// <summary>Which implementation of the LZ4 block format compresses and decompresses pages.</summary>
public enum Lz4Engine
{
    /// <summary>liblz4 when it loads, else the managed codec.</summary>
    Auto,
    /// <summary>The system's liblz4.so.1 (lz4.h block API); an error when it cannot be loaded.</summary>
    Native,
    /// <summary>K4os.Compression.LZ4, a port of the same block compressor to .NET.</summary>
    Managed,
}

/// <summary>
/// The process-wide choice of LZ4 implementation. Both produce the LZ4 block format
/// (lz4/doc/lz4_Block_format.md) and, at acceleration 1, the same bytes for the same input, so an
/// image does not record which one wrote it and either reads what the other wrote.
/// </summary>
/// <remarks>
/// liblz4 is the default because it measured faster here (bench <c>LibraryBenchmarks</c>); the
/// managed codec takes over when liblz4.so.1 is absent or unloadable, so the tool still runs.
/// </remarks>
public static class Lz4Engines
{
    private static Lz4Engine _preferred = Lz4Engine.Auto;
    private static readonly Lazy<bool> NativeLoads = new(ProbeNative);

    /// <summary>The engine asked for (CLI <c>--lz4</c>); <see cref="Lz4Engine.Auto"/> unless set.</summary>
    public static Lz4Engine Preferred
    {
        get => _preferred;
        set => _preferred = Enum.IsDefined(value) ? value : throw new ArgumentOutOfRangeException(nameof(value));
    }

    /// <summary>Whether liblz4.so.1 loads and exports the block functions used here.</summary>
    public static bool NativeAvailable => NativeLoads.Value;

    /// <summary>The engine that will actually run.</summary>
    public static Lz4Engine Effective => _preferred switch
    {
        Lz4Engine.Native => Lz4Engine.Native,
        Lz4Engine.Managed => Lz4Engine.Managed,
        _ => NativeAvailable ? Lz4Engine.Native : Lz4Engine.Managed,
    };

    /// <summary>Parses the CLI spelling: auto, native, managed.</summary>
    public static Lz4Engine Parse(string text) => text.ToLowerInvariant() switch
    {
        "auto" => Lz4Engine.Auto,
        "native" => Lz4Engine.Native,
        "managed" => Lz4Engine.Managed,
        _ => throw new ArgumentException($"unknown LZ4 engine '{text}' (expected auto, native or managed)"),
    };

    private static bool ProbeNative()
    {
        try
        {
            if (!NativeLibrary.TryLoad(Interop.Libraries.Lz4, typeof(Lz4Engines).Assembly, null, out var lib))
                return false;
            return NativeLibrary.TryGetExport(lib, "LZ4_compress_fast", out _)
                && NativeLibrary.TryGetExport(lib, "LZ4_decompress_safe", out _);
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            return false;
        }
    }
}

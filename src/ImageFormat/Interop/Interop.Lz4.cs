using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

internal static partial class Interop
{
    /// <summary>lz4.h block API. Sizes are C ints; a block never exceeds 256 KiB here.</summary>
    internal static unsafe partial class Lz4
    {
        [LibraryImport(Libraries.Lz4, EntryPoint = "LZ4_compress_fast")]
        internal static partial int CompressFast(byte* src, byte* dst, int srcSize, int dstCapacity, int acceleration);

        [LibraryImport(Libraries.Lz4, EntryPoint = "LZ4_compress_default")]
        internal static partial int CompressDefault(byte* src, byte* dst, int srcSize, int dstCapacity);

        /// <summary>Returns the decompressed size, or a negative value for malformed input.</summary>
        [LibraryImport(Libraries.Lz4, EntryPoint = "LZ4_decompress_safe")]
        internal static partial int DecompressSafe(byte* src, byte* dst, int compressedSize, int dstCapacity);

        [LibraryImport(Libraries.Lz4, EntryPoint = "LZ4_compressBound")]
        internal static partial int CompressBound(int inputSize);

        [LibraryImport(Libraries.Lz4, EntryPoint = "LZ4_versionNumber")]
        internal static partial int VersionNumber();
    }
}

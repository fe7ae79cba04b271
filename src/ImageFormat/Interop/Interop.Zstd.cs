using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

internal static partial class Interop
{
    /// <summary>zstd.h simple and explicit-context API. Results are size_t; errors are tested with ZSTD_isError.</summary>
    internal static unsafe partial class Zstd
    {
        [LibraryImport(Libraries.Zstd, EntryPoint = "ZSTD_createCCtx")]
        internal static partial SafeZstdCompressContext CreateCCtx();

        [LibraryImport(Libraries.Zstd, EntryPoint = "ZSTD_freeCCtx")]
        internal static partial nuint FreeCCtx(IntPtr cctx);

        [LibraryImport(Libraries.Zstd, EntryPoint = "ZSTD_createDCtx")]
        internal static partial SafeZstdDecompressContext CreateDCtx();

        [LibraryImport(Libraries.Zstd, EntryPoint = "ZSTD_freeDCtx")]
        internal static partial nuint FreeDCtx(IntPtr dctx);

        [LibraryImport(Libraries.Zstd, EntryPoint = "ZSTD_compressCCtx")]
        internal static partial nuint CompressCCtx(SafeZstdCompressContext cctx, byte* dst, nuint dstCapacity, byte* src, nuint srcSize, int level);

        [LibraryImport(Libraries.Zstd, EntryPoint = "ZSTD_decompressDCtx")]
        internal static partial nuint DecompressDCtx(SafeZstdDecompressContext dctx, byte* dst, nuint dstCapacity, byte* src, nuint srcSize);

        [LibraryImport(Libraries.Zstd, EntryPoint = "ZSTD_compressBound")]
        internal static partial nuint CompressBound(nuint srcSize);

        [LibraryImport(Libraries.Zstd, EntryPoint = "ZSTD_isError")]
        internal static partial uint IsError(nuint code);

        [LibraryImport(Libraries.Zstd, EntryPoint = "ZSTD_getErrorName")]
        internal static partial IntPtr GetErrorName(nuint code);

        internal static string ErrorName(nuint code) => Marshal.PtrToStringUTF8(GetErrorName(code)) ?? $"zstd error {code}";
    }

    /// <summary>A ZSTD_CCtx: reusing one context across blocks avoids re-allocating zstd's tables per block.</summary>
    internal sealed class SafeZstdCompressContext : SafeHandle
    {
        public SafeZstdCompressContext() : base(IntPtr.Zero, ownsHandle: true) { }
        public override bool IsInvalid => handle == IntPtr.Zero;
        protected override bool ReleaseHandle()
        {
            Zstd.FreeCCtx(handle);
            return true;
        }
    }

    internal sealed class SafeZstdDecompressContext : SafeHandle
    {
        public SafeZstdDecompressContext() : base(IntPtr.Zero, ownsHandle: true) { }
        public override bool IsInvalid => handle == IntPtr.Zero;
        protected override bool ReleaseHandle()
        {
            Zstd.FreeDCtx(handle);
            return true;
        }
    }
}

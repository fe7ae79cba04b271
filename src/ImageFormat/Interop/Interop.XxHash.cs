using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

internal static partial class Interop
{
    /// <summary>xxhash.h: XXH3 64-bit, stateless one-shot form.</summary>
    internal static unsafe partial class XxHash
    {
        [LibraryImport(Libraries.XxHash, EntryPoint = "XXH3_64bits")]
        internal static partial ulong Xxh3_64(byte* data, nuint length);
    }
}

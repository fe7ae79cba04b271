namespace CriuSharp.ImageFormat;

internal static partial class Interop
{
    /// <summary>
    /// The system's reference C libraries, by soname so that only the runtime package (liblz4-1,
    /// libzstd1, libxxhash0) is needed, not the -dev one that provides the unversioned symlink.
    /// </summary>
    internal static class Libraries
    {
        internal const string Lz4 = "liblz4.so.1";
        internal const string Zstd = "libzstd.so.1";
        internal const string XxHash = "libxxhash.so.0";
    }
}

using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

internal static partial class Interop
{
    /// <summary>xxhash.h: XXH3 64-bit, stateless one-shot form.</summary>
    /// <remarks>
    /// Called once per page and per block on the dump's hot path; it is short, never blocks and
    /// never calls back, so the GC transition is left out (hundreds of thousands of calls per GiB).
    /// Where the library was built with xxh_x86dispatch (Debian's is), <c>XXH3_64bits_dispatch</c>
    /// picks the widest vector unit at run time (AVX2 here, against the SSE2 baseline of the
    /// plain entry point); both return the same value, XXH3 being defined independently of the
    /// instructions that compute it.
    /// </remarks>
    internal static unsafe partial class XxHash
    {
        [LibraryImport(Libraries.XxHash, EntryPoint = "XXH3_64bits")]
        [SuppressGCTransition]
        private static partial ulong Xxh3_64Baseline(byte* data, nuint length);

        private static readonly delegate* unmanaged[SuppressGCTransition]<byte*, nuint, ulong> Dispatch = FindDispatch();

        private static delegate* unmanaged[SuppressGCTransition]<byte*, nuint, ulong> FindDispatch()
        {
            try
            {
                if (NativeLibrary.TryLoad(Libraries.XxHash, typeof(XxHash).Assembly, null, out var lib)
                    && NativeLibrary.TryGetExport(lib, "XXH3_64bits_dispatch", out var fn))
                    return (delegate* unmanaged[SuppressGCTransition]<byte*, nuint, ulong>)fn;
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                // The plain entry point reports the missing library with the usual error.
            }
            return null;
        }

        /// <summary>The SSE2 baseline entry point, for checking the dispatched one against it.</summary>
        internal static ulong Xxh3_64Plain(byte* data, nuint length) => Xxh3_64Baseline(data, length);

        internal static bool Dispatched => Dispatch != null;

        /// <summary>Whether libxxhash loads at all; without it the managed XXH3 computes the same values.</summary>
        internal static readonly bool Available = Probe();

        private static bool Probe()
        {
            try
            {
                return NativeLibrary.TryLoad(Libraries.XxHash, typeof(XxHash).Assembly, null, out var lib)
                    && NativeLibrary.TryGetExport(lib, "XXH3_64bits", out _);
            }
            catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
            {
                return false;
            }
        }

        internal static ulong Xxh3_64(byte* data, nuint length) =>
            Dispatch != null ? Dispatch(data, length) : Xxh3_64Baseline(data, length);
    }
}

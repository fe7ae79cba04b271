using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

internal static partial class Interop
{
    internal static partial class Libc
    {
        private const string Name = "libc";

        [LibraryImport(Name, EntryPoint = "realpath", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
        private static partial IntPtr RealPathNative(string path, IntPtr resolved);

        [LibraryImport(Name, EntryPoint = "free")]
        private static partial void Free(IntPtr p);

        internal const int FALLOC_FL_KEEP_SIZE = 0x01;
        internal const int FALLOC_FL_PUNCH_HOLE = 0x02;

        [LibraryImport(Name, EntryPoint = "fallocate", SetLastError = true)]
        internal static partial int Fallocate(Microsoft.Win32.SafeHandles.SafeFileHandle fd, int mode, long offset, long len);

        internal const int ENOENT = 2;
        internal const int ELOOP = 40;

        /// <summary>The canonical path (all symlinks resolved), or null with the errno.</summary>
        internal static string? RealPath(string path, out int errno)
        {
            var p = RealPathNative(path, IntPtr.Zero);
            if (p == IntPtr.Zero)
            {
                errno = Marshal.GetLastPInvokeError();
                return null;
            }
            try
            {
                errno = 0;
                return Marshal.PtrToStringUTF8(p);
            }
            finally
            {
                Free(p);
            }
        }
    }
}

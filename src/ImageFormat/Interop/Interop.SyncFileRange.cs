using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace CriuSharp.ImageFormat;

internal static partial class Interop
{
    internal static partial class Libc
    {
        private const uint SyncFileRangeWrite = 2; // SYNC_FILE_RANGE_WRITE

        [LibraryImport(Name, EntryPoint = "sync_file_range", SetLastError = true)]
        private static partial int SyncFileRangeNative(int fd, long offset, long nbytes, uint flags);

        /// <summary>
        /// sync_file_range(SYNC_FILE_RANGE_WRITE): starts writeback of the range and returns
        /// without waiting. Only a hint (durability still comes from fsync); failures are ignored.
        /// </summary>
        internal static void StartWriteback(SafeFileHandle handle, long offset, long bytes)
        {
            bool added = false;
            try
            {
                handle.DangerousAddRef(ref added);
                _ = SyncFileRangeNative((int)handle.DangerousGetHandle(), offset, bytes, SyncFileRangeWrite);
            }
            finally
            {
                if (added)
                    handle.DangerousRelease();
            }
        }
    }
}

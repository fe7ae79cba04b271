using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace CriuSharp.Dumper;

internal static partial class Interop
{
    internal static partial class Libc
    {
        private const string Name = "libc";
        internal const int FALLOC_FL_KEEP_SIZE = 0x01;
        internal const int FALLOC_FL_PUNCH_HOLE = 0x02;

        [LibraryImport(Name, EntryPoint = "fallocate", SetLastError = true)]
        private static partial int FallocateNative(SafeFileHandle fd, int mode, long offset, long len);

        /// <summary>fallocate(PUNCH_HOLE | KEEP_SIZE): the range reads back as zeros, offsets stay.</summary>
        internal static void PunchHole(SafeFileHandle fd, long offset, long len, string path)
        {
            if (len <= 0)
                return;
            if (FallocateNative(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len) != 0)
                throw new DumperException($"auto-dedup: cannot punch {len} bytes at offset {offset} of {path} (errno {Marshal.GetLastPInvokeError()})");
        }
    }
}

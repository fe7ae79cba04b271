using System.Globalization;
using System.IO.Hashing;
using System.Text;

namespace CriuSharp.ImageFormat;

/// <summary>
/// criu-sharp.manifest: the size and CRC-32 (IEEE 802.3, System.IO.Hashing) of every metadata image of a committed directory
/// (inventory, pstree, core, mm, ids, files, sim-state), written just before the incomplete marker
/// is removed and checked whenever the directory is opened for reading. Those images have no
/// checksum of their own, so without it a flipped bit in a register or a VMA's protection would
/// restore different state silently.
///
/// Not covered, by design: pagemap-*.img and pages-*.img (pages carry block checksums, and every
/// VMA's contents are verified against the checksum recorded at dump time, which also catches a
/// wrong pagemap; --auto-dedup legitimately punches holes in a parent's pages), stats-* (rewritten
/// by every restore) and the parent link (re-pointed when a chain moves). A directory without a
/// manifest (made by CRIU, or before manifests existed) is read unverified.
/// </summary>
public static class Manifest
{
    public const string FileName = "criu-sharp.manifest";
    private const string Header = "criu-sharp manifest v2";
    /// <summary>Manifests before v2 held CRC-32C; those directories are still read, sizes checked.</summary>
    private const string HeaderV1 = "criu-sharp manifest v1";
    private const long MaxManifestBytes = 1 << 20;

    public static bool Covers(string fileName) =>
        fileName.StartsWith(ImageNames.ExtPrefix, StringComparison.Ordinal)
            ? Covers(fileName[ImageNames.ExtPrefix.Length..]) // a sidecar as its image
            : fileName.EndsWith(".img", StringComparison.Ordinal)
        && !fileName.StartsWith("pages-", StringComparison.Ordinal)
        && !fileName.StartsWith("pagemap-", StringComparison.Ordinal)
        && !fileName.StartsWith('.');

    public static void Write(string dir)
    {
        var sb = new StringBuilder(Header).Append('\n');
        foreach (var path in Directory.EnumerateFiles(dir).Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileName(path);
            if (!Covers(name))
                continue;
            var bytes = File.ReadAllBytes(path);
            sb.Append(CultureInfo.InvariantCulture, $"{name} {bytes.Length} {Checksum(bytes):x8}\n");
        }
        AtomicFile.Write(Path.Combine(dir, FileName), Encoding.UTF8.GetBytes(sb.ToString()));
    }

    /// <summary>Throws <see cref="ImageFormatException"/> when a covered file is missing or differs.</summary>
    public static void Verify(string dir)
    {
        string manifest = Path.Combine(dir, FileName);
        if (!File.Exists(manifest))
            return;
        string[] lines;
        try
        {
            if (new FileInfo(manifest).Length > MaxManifestBytes)
                throw new ImageFormatException(manifest, "manifest", null, "larger than any manifest criu-sharp writes");
            lines = File.ReadAllText(manifest).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        }
        catch (IOException e)
        {
            throw new ImageFormatException(manifest, "manifest", null, $"cannot be read: {e.Message}", e);
        }
        bool legacy = lines.Length > 0 && lines[0] == HeaderV1;
        if (lines.Length == 0 || (lines[0] != Header && !legacy))
            throw new ImageFormatException(manifest, "manifest", null, "not a criu-sharp manifest (bad header)");
        foreach (var line in lines.Skip(1))
        {
            var f = line.Split(' ');
            if (f.Length != 3 || !Covers(f[0]) || f[0].Contains('/') || !long.TryParse(f[1], NumberStyles.None, CultureInfo.InvariantCulture, out long size)
                || !uint.TryParse(f[2], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out uint crc))
                throw new ImageFormatException(manifest, "manifest", null, $"malformed line '{Truncate(line)}'");
            string path = Path.Combine(dir, f[0]);
            if (!File.Exists(path))
                throw new ImageFormatException(path, "image directory", null, "missing: the manifest lists it but the file is gone");
            if (new FileInfo(path).Length != size)
                throw new ImageFormatException(path, "image directory", null, $"changed since the dump: {new FileInfo(path).Length} bytes, the manifest says {size}");
            if (!legacy && Checksum(File.ReadAllBytes(path)) != crc)
                throw new ImageFormatException(path, "image directory", null, "changed since the dump: checksum differs from the manifest");
        }
    }

    private static string Truncate(string s) => s.Length <= 60 ? s : s[..60] + "...";

    internal static uint Checksum(ReadOnlySpan<byte> data) => Crc32.HashToUInt32(data);
}

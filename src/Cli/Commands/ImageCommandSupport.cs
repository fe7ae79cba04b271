using System.Text.Json;
using System.Text.Json.Nodes;
using CriuSharp.ImageFormat;
using CriuSharp.ImageFormat.Json;

namespace CriuSharp.Cli;

/// <summary>Shared plumbing of the image inspection verbs (show, decode, encode, x).</summary>
internal static class ImageCommandSupport
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static string RequireFile(string path)
    {
        if (!File.Exists(path))
            throw new UserException(ExitCode.BadInput, $"{path}: no such file");
        return path;
    }

    public static string RequireDirectory(string path)
    {
        if (!Directory.Exists(path))
            throw new UserException(ExitCode.BadInput, $"{path}: no such directory");
        return path;
    }

    /// <summary>Reads an image whatever its kind; the kind comes from the magics, as crit does.</summary>
    public static ImageContents ReadAny(string path)
    {
        RequireFile(path);
        var byName = ImageKind.FromFileName(path);
        if (byName is null && Path.GetFileName(path).StartsWith("pages-", StringComparison.Ordinal))
            throw new UserException(ExitCode.BadInput, $"{path}: pages-N.img is a raw image with no magic and no entries",
                "Show its pagemap-*.img instead, or explore the directory with 'criu-sharp x DIR rss'.");
        return ImageFile.Read(path);
    }

    public static (ImageKind Kind, List<Google.Protobuf.IMessage> Entries) ParseJson(string json, string source)
    {
        try
        {
            return CritJson.FromJson(json);
        }
        catch (CritJsonException e)
        {
            throw new UserException(ExitCode.BadInput, $"{source}: {e.Message}");
        }
    }

    public static void WriteJson(TextWriter output, JsonNode node) => output.WriteLine(node.ToJsonString(Indented));
}

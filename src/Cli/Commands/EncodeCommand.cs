using System.CommandLine;
using CriuSharp.ImageFormat;

namespace CriuSharp.Cli;

/// <summary><c>encode -i JSON -o IMG</c>: accepts crit's JSON, plain or pretty, and writes the image atomically.</summary>
internal static class EncodeCommand
{
    public static Command Create()
    {
        var input = new Option<string>("--input", "-i") { Description = "JSON file (crit decode/show shape).", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "Image file to write.", Required = true };
        var cmd = new Command("encode", "Convert crit-shaped JSON back to an image file.") { input, output };
        cmd.SetAction(parse =>
        {
            var path = ImageCommandSupport.RequireFile(parse.GetValue(input)!);
            var (kind, entries) = ImageCommandSupport.ParseJson(File.ReadAllText(path), path);
            // Unlike crit, a failed encode leaves no half-written output behind.
            ImageFile.WriteAtomic(parse.GetValue(output)!, kind, entries);
            return 0;
        });
        return cmd;
    }
}

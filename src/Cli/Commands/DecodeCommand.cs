using System.CommandLine;
using CriuSharp.ImageFormat.Json;

namespace CriuSharp.Cli;

/// <summary><c>decode -i IMG [-o JSON]</c>: crit decode's JSON shape, so crit encode takes it back.</summary>
internal static class DecodeCommand
{
    public static Command Create()
    {
        var input = new Option<string>("--input", "-i") { Description = "Image file to decode.", Required = true };
        var output = new Option<string?>("--output", "-o") { Description = "Write the JSON here instead of stdout." };
        var pretty = new Option<bool>("--pretty") { Description = "Use crit's pretty renderings (hex strings, flag names)." };
        var cmd = new Command("decode", "Convert an image to JSON ({\"magic\": NAME, \"entries\": [...]}, as crit decode).") { input, output, pretty };
        cmd.SetAction(parse =>
        {
            var image = ImageCommandSupport.ReadAny(parse.GetValue(input)!);
            var json = CritJson.ToJson(image, parse.GetValue(pretty));
            var target = parse.GetValue(output);
            if (target is null)
                parse.InvocationConfiguration.Output.WriteLine(json);
            else
                File.WriteAllText(target, json + "\n");
            return 0;
        });
        return cmd;
    }
}

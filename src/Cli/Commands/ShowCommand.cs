using System.CommandLine;
using CriuSharp.ImageFormat.Json;

namespace CriuSharp.Cli;

/// <summary><c>show -i FILE</c>: any image as JSON, with crit show's renderings (hex, flag names).</summary>
internal static class ShowCommand
{
    public static Command Create()
    {
        var input = new Option<string>("--input", "-i") { Description = "Image file to print.", Required = true };
        var plain = new Option<bool>("--plain") { Description = "Print integers as numbers (crit decode's form) instead of crit show's hex and flag names." };
        var cmd = new Command("show", "Print any image file as JSON, like 'crit show'.") { input, plain };
        cmd.SetAction(parse =>
        {
            var image = ImageCommandSupport.ReadAny(parse.GetValue(input)!);
            parse.InvocationConfiguration.Output.WriteLine(CritJson.ToJson(image, pretty: !parse.GetValue(plain)));
            return 0;
        });
        return cmd;
    }
}

using System.CommandLine;
using CriuSharp.ImageFormat.Json;

namespace CriuSharp.Cli;

/// <summary><c>show FILE</c> (as <c>crit show FILE</c>; <c>-i FILE</c> also works): any image as JSON, with crit show's renderings (hex, flag names).</summary>
internal static class ShowCommand
{
    public static Command Create()
    {
        var file = new Argument<string?>("file") { Description = "Image file to print.", Arity = ArgumentArity.ZeroOrOne };
        var input = new Option<string?>("--input", "-i") { Description = "Image file to print (the same as the argument)." };
        var plain = new Option<bool>("--plain") { Description = "Print integers as numbers (crit decode's form) instead of crit show's hex and flag names." };
        var cmd = new Command("show", "Print any image file as JSON, like 'crit show FILE'.") { file, input, plain };
        cmd.Validators.Add(r =>
        {
            if ((r.GetValue(file) is null) == (r.GetValue(input) is null))
                r.AddError("give the image file once: 'show FILE' (or 'show -i FILE')");
        });
        cmd.SetAction(parse =>
        {
            var image = ImageCommandSupport.ReadAny((parse.GetValue(file) ?? parse.GetValue(input))!);
            parse.InvocationConfiguration.Output.WriteLine(CritJson.ToJson(image, pretty: !parse.GetValue(plain)));
            return 0;
        });
        return cmd;
    }
}

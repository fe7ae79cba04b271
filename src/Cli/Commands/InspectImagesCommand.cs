using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using CriuSharp.Traces;

namespace CriuSharp.Cli;

/// <summary>criu-sharp inspect DIR|TRACE: checkpointctl-style page figures per image, process and VMA.</summary>
public static class InspectImagesCommand
{
    public static Command Create()
    {
        var path = new Argument<string>("path") { Description = "An image directory (its parent chain is followed) or a trace directory." };
        var format = new Option<string>("--format") { Description = "tree (default) or json.", DefaultValueFactory = _ => "tree" }
            .AcceptOnlyFromAmong("tree", "json");
        var json = CommonOptions.Json();
        var cmd = new Command("inspect",
            "Pages present, written, zero and in parent, raw and stored bytes and their ratio — per image of a chain or trace, per process and per VMA (as checkpointctl inspect).");
        cmd.Arguments.Add(path);
        cmd.Options.Add(format);
        cmd.Options.Add(json);
        cmd.SetAction(p =>
        {
            string dir = Path.GetFullPath(p.GetValue(path)!);
            if (!Directory.Exists(dir))
                throw new UserException(ExitCode.BadInput, $"{dir}: no such directory");
            var result = Inspector.Inspect(dir);
            var o = p.InvocationConfiguration.Output;
            if (p.GetValue(json) || p.GetValue(format) == "json")
                o.WriteLine(JsonSerializer.Serialize(result, JsonOut.Options));
            else
                Tree(o, result);
            return 0;
        });
        return cmd;
    }

    private static string Size(ulong bytes) => bytes switch
    {
        >= 1UL << 30 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1UL << 30):0.0} GiB"),
        >= 1UL << 20 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1UL << 20):0.0} MiB"),
        >= 1UL << 10 => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1024.0:0.0} KiB"),
        _ => $"{bytes} B",
    };

    private static string Figures(PageFigures f) => string.Create(CultureInfo.InvariantCulture,
        $"present {f.Present}, written {f.Written} (zero {f.Zero}), in parent {f.InParent}; raw {Size(f.RawBytes)}, stored {Size(f.StoredBytes)}, ratio {f.Ratio:0.00}");

    private static void Tree(TextWriter o, Inspection r)
    {
        string what = r.IsTrace ? $"trace of pid {r.Pid} ({r.Comm}), {r.Images.Count} samples{(r.EndedEarly == true ? ", ended early" : "")}" : $"{r.Images.Count} image(s) in the chain";
        o.WriteLine($"{r.Path}: {what}");
        o.WriteLine($"│ total: {Figures(r.Total)}");
        for (int i = 0; i < r.Images.Count; i++)
        {
            var img = r.Images[i];
            bool lastImg = i == r.Images.Count - 1;
            string time = img.TimeNs is ulong t ? string.Create(CultureInfo.InvariantCulture, $" t={t / 1e6:0.###} ms") : "";
            o.WriteLine($"{(lastImg ? "└── " : "├── ")}{Path.GetFileName(img.Dir)}{time} [{img.Compression}]: {Figures(img.Total)}");
            string pad = lastImg ? "    " : "│   ";
            for (int j = 0; j < img.Processes.Count; j++)
            {
                var proc = img.Processes[j];
                bool lastProc = j == img.Processes.Count - 1;
                o.WriteLine($"{pad}{(lastProc ? "└── " : "├── ")}pid {proc.Pid}: {Figures(proc.Total)}");
                string pad2 = pad + (lastProc ? "    " : "│   ");
                for (int k = 0; k < proc.Vmas.Count; k++)
                {
                    var v = proc.Vmas[k];
                    string range = v.Start.Length > 0 ? $"{v.Start}-{v.End} {v.Prot}" : "";
                    o.WriteLine($"{pad2}{(k == proc.Vmas.Count - 1 ? "└── " : "├── ")}{$"{range} {v.Name}".Trim()}: {Figures(v.Pages)}");
                }
            }
        }
    }
}

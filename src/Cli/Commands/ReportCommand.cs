using System.CommandLine;
using System.Text;
using CriuSharp.Migration;

namespace CriuSharp.Cli;

/// <summary>criu-sharp report: the compare matrix as one self-contained HTML file with SVG charts.</summary>
public static class ReportCommand
{
    public static Command Create()
    {
        var m = new MatrixArgs("phaul,qemu,xen,fixed:3,none", "lz4");
        var output = new Option<string>("--output", "-o") { Description = "The HTML file to write (replaced atomically).", Required = true };
        var cmd = new Command("report", "Migrate one workload under several policies and write an HTML report with charts: dirty pages per iteration, cumulative bytes sent, downtime per policy.");
        m.AddTo(cmd);
        cmd.Options.Add(output);
        cmd.SetAction(p =>
        {
            string path = Path.GetFullPath(p.GetValue(output)!);
            string? parent = Path.GetDirectoryName(path);
            if (parent is not null && !Directory.Exists(parent))
                throw new UserException(ExitCode.BadInput, $"{parent}: no such directory");
            var results = m.Run(p, json: false);
            // Written to a temporary name in the same directory and renamed: a reader never sees half a report.
            ImageFormat.AtomicFile.Write(path, Encoding.UTF8.GetBytes(ReportHtml.Build(results)));
            var o = p.InvocationConfiguration.Output;
            var (header, rows) = CompareCommand.Table(results);
            MigrateOutput.Table(o, header, rows, rightAligned: CompareCommand.NumericColumns(header));
            o.WriteLine($"wrote {path}");
            return results.All(r => r.Verification.Ok) ? 0 : (int)ExitCode.CheckFailed;
        });
        return cmd;
    }
}

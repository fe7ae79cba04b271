using System.Globalization;
using System.Net;
using System.Text;
using CriuSharp.Migration;

namespace CriuSharp.Cli;

/// <summary>
/// One self-contained HTML page (no script, no external file) with SVG charts drawn by ScottPlot
/// and inlined: dirty pages per iteration, cumulative bytes sent, downtime per run split into its
/// parts, and bytes sent by compression and block size. Each chart sits in a
/// <c>&lt;figure class="chart" id=…&gt;</c> whose <c>data-series</c> and <c>data-points</c> say how
/// much was drawn, so a test (or a reader's browser tools) can find it; the tables below the charts
/// hold the same figures as text.
/// </summary>
internal static class ReportHtml
{
    private static readonly string[] Palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
    private static readonly (string Name, string Color)[] DowntimeParts = [("frozen (final dump)", "#4c72b0"), ("transfer", "#dd8452"), ("restore", "#55a868")];

    private const int W = 720, H = 340;

    private static string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);
    private static string E(string s) => WebUtility.HtmlEncode(s);

    public static string Label(MigrationResult r) =>
        (r.Compression == "none" ? $"{r.Policy} / none" : $"{r.Policy} / {r.Compression} {r.BlockKiB}K")
        + (r.ElideUnchanged ? " +elide" : "") + (r.DeltaCacheBytes > 0 ? " +delta" : "");

    public static string Build(IReadOnlyList<MigrationResult> runs)
    {
        var sb = new StringBuilder();
        var first = runs[0];
        sb.Append("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>criu-sharp migration report</title>\n<style>\n")
          .Append("body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}")
          .Append("table{border-collapse:collapse;margin:8px 0 20px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}")
          .Append("th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}")
          .Append("figure.chart{margin:8px 0 24px}figure.chart svg{display:block;border:1px solid #ddd;background:#fff}")
          .Append(".ok{color:#1a7f37}.bad{color:#c00;font-weight:600}\n</style></head><body>\n");
        sb.Append($"<h1>Live migration of {E(Path.GetFileName(first.Workload))}</h1>\n");
        sb.Append($"<p>{E(first.Workload)} on {E(first.Arch)}/{E(first.Kernel)}, tracker {E(first.Tracker)}, link {F(first.BandwidthBytesPerSecond / 1048576.0)} MiB/s. ")
          .Append("Downtime = frozen time of the final dump + transfer of the final images + restore time (")
          .Append(first.Transport == "tcp"
              ? "measured on the wall clock: the destination was a separate migrate-service process reached over TCP"
              : "virtual time of the cost model")
          .Append(").</p>\n");

        // Summary table.
        sb.Append("<table id=\"summary\"><tr>");
        var (header, rows) = CompareCommand.Table(runs);
        foreach (var h in header) sb.Append($"<th>{E(h)}</th>");
        sb.Append("</tr>\n");
        for (int ri = 0; ri < runs.Count; ri++)
        {
            var r = runs[ri];
            sb.Append("<tr>");
            var row = rows[ri];
            for (int c = 0; c < row.Length; c++)
                sb.Append(c == row.Length - 1 ? $"<td class=\"{(r.Verification.Ok ? "ok" : "bad")}\">{E(row[c])}</td>" : $"<td>{E(row[c])}</td>");
            sb.Append("</tr>\n");
        }
        sb.Append("</table>\n");

        sb.Append("<h2>Dirty pages per iteration</h2>\n<p>Pages written by each pre-dump and, last, by the final dump.</p>\n");
        sb.Append(LineChart("dirty-pages", "pages written per iteration (log scale)", runs,
            r => r.Iterations.Select(i => (double)i.PagesWritten).ToList(), log: true, unit: "pages"));
        sb.Append("<h2>Cumulative bytes sent</h2>\n");
        sb.Append(LineChart("bytes-sent", "cumulative bytes sent (MiB)", runs,
            r => { double s = 0; return r.Iterations.Select(i => s += i.BytesSent / 1048576.0).ToList(); }, log: false, unit: "MiB"));
        sb.Append("<h2>Downtime per run</h2>\n");
        sb.Append(DowntimeBars(runs));
        sb.Append("<h2>Bytes sent by compression and block size</h2>\n<p>Total bytes sent per run (all pre-dumps and the final dump), one bar per run.</p>\n");
        sb.Append(BytesByStore(runs));
        // Placed after the charts reports already had, so those keep their place on the page.
        sb.Append("<h2>Bytes sent per iteration</h2>\n<p>Every file of each image directory; runs with elision or deltas on carry +elide / +delta in their label.</p>\n");
        sb.Append(LineChart("bytes-per-iteration", "bytes sent per iteration (KiB, log scale)", runs,
            r => r.Iterations.Select(i => Math.Max(1.0, i.BytesSent / 1024.0)).ToList(), log: true, unit: "KiB"));

        sb.Append("<h2>Iterations</h2>\n");
        foreach (var r in runs)
        {
            sb.Append($"<h3>{E(Label(r))}: stop because {E(r.StopReason)}</h3>\n<table><tr>");
            foreach (var h in MigrateOutput.Columns) sb.Append($"<th>{E(h)}</th>");
            sb.Append("</tr>\n");
            foreach (var i in r.Iterations)
            {
                sb.Append("<tr>");
                foreach (var c in MigrateOutput.Row(i)) sb.Append($"<td>{E(c)}</td>");
                sb.Append("</tr>\n");
            }
            sb.Append("</table>\n");
        }
        sb.Append("<p>Generated by <code>criu-sharp report</code>.</p>\n</body></html>\n");
        return sb.ToString();
    }

    private static ScottPlot.Color C(string hex) => ScottPlot.Color.FromHex(hex);

    /// <summary>The plot as inline SVG, wrapped in a figure a test can find by id.</summary>
    private static string Figure(string id, ScottPlot.Plot plot, int height, int series, int points)
    {
        plot.FigureBackground.Color = ScottPlot.Colors.White;
        string svg = plot.GetSvgXml(W, height);
        // The XML declaration is not allowed inside HTML.
        if (svg.StartsWith("<?xml", StringComparison.Ordinal))
            svg = svg[(svg.IndexOf("?>", StringComparison.Ordinal) + 2)..].TrimStart();
        return $"<figure class=\"chart\" id=\"{id}\" data-series=\"{series}\" data-points=\"{points}\">{svg}</figure>\n";
    }

    private static string LineChart(string id, string title, IReadOnlyList<MigrationResult> runs, Func<MigrationResult, List<double>> values, bool log, string unit)
    {
        var plot = new ScottPlot.Plot();
        int points = 0;
        for (int s = 0; s < runs.Count; s++)
        {
            var ys = values(runs[s]);
            if (ys.Count == 0)
                continue;
            // Log scale as ScottPlot draws one: plot log10 of the values, label ticks with 10^tick.
            double[] y = log ? ys.Select(v => Math.Log10(Math.Max(1, v))).ToArray() : ys.ToArray();
            double[] x = Enumerable.Range(1, ys.Count).Select(i => (double)i).ToArray();
            var line = plot.Add.Scatter(x, y, C(Palette[s % Palette.Length]));
            line.LegendText = Label(runs[s]);
            line.LineWidth = 2;
            line.MarkerSize = 7;
            points += ys.Count;
        }
        if (log)
        {
            plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic
            {
                MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
                IntegerTicksOnly = true,
                LabelFormatter = v => Math.Pow(10, v).ToString("#,0", CultureInfo.InvariantCulture),
            };
        }
        plot.Title(title);
        plot.XLabel("iteration (last = final dump)");
        plot.YLabel(unit);
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
        plot.ShowLegend(ScottPlot.Edge.Bottom);
        return Figure(id, plot, H + 20 * runs.Count, runs.Count, points);
    }

    private static string DowntimeBars(IReadOnlyList<MigrationResult> runs)
    {
        var plot = new ScottPlot.Plot();
        var bars = new List<ScottPlot.Bar>();
        for (int i = 0; i < runs.Count; i++)
        {
            var r = runs[i];
            double at = 0;
            ulong[] parts = [r.Downtime.FrozenNs, r.Downtime.TransferNs, r.Downtime.RestoreNs];
            for (int p = 0; p < parts.Length; p++)
            {
                double ms = parts[p] / 1e6;
                // Top to bottom in the order given, like the table.
                bars.Add(new ScottPlot.Bar { Position = runs.Count - 1 - i, ValueBase = at, Value = at + ms, FillColor = C(DowntimeParts[p].Color), LineWidth = 0 });
                at += ms;
            }
        }
        var plotted = plot.Add.Bars(bars);
        plotted.Horizontal = true;
        plot.Axes.Left.SetTicks(Enumerable.Range(0, runs.Count).Select(i => (double)(runs.Count - 1 - i)).ToArray(), runs.Select(Label).ToArray());
        plot.Legend.ManualItems.AddRange(DowntimeParts.Select(d => new ScottPlot.LegendItem { LabelText = d.Name, FillColor = C(d.Color) }));
        plot.ShowLegend(ScottPlot.Edge.Bottom);
        plot.Title("downtime (ms) = frozen + transfer + restore");
        plot.XLabel("ms");
        plot.Axes.Margins(left: 0, right: 0.1, bottom: 0.05, top: 0.05);
        return Figure("downtime", plot, 130 + 40 * runs.Count, runs.Count, bars.Count);
    }

    private static string BytesByStore(IReadOnlyList<MigrationResult> runs)
    {
        var plot = new ScottPlot.Plot();
        var compressions = runs.Select(r => r.Compression).Distinct().ToList();
        var bars = new List<ScottPlot.Bar>();
        for (int i = 0; i < runs.Count; i++)
        {
            var r = runs[i];
            double kib = r.Iterations.Sum(it => (double)it.BytesSent) / 1024;
            string color = Palette[compressions.IndexOf(r.Compression) % Palette.Length];
            bars.Add(new ScottPlot.Bar { Position = runs.Count - 1 - i, Value = kib, FillColor = C(color), LineWidth = 0, Label = kib.ToString("#,0", CultureInfo.InvariantCulture) + " KiB" });
        }
        var plotted = plot.Add.Bars(bars);
        plotted.Horizontal = true;
        plotted.ValueLabelStyle.FontSize = 11;
        plot.Axes.Left.SetTicks(Enumerable.Range(0, runs.Count).Select(i => (double)(runs.Count - 1 - i)).ToArray(), runs.Select(Label).ToArray());
        plot.Legend.ManualItems.AddRange(compressions.Select((c, k) => new ScottPlot.LegendItem { LabelText = c, FillColor = C(Palette[k % Palette.Length]) }));
        plot.ShowLegend(ScottPlot.Edge.Bottom);
        plot.Title("total bytes sent (KiB)");
        plot.XLabel("KiB");
        plot.Axes.Margins(left: 0, right: 0.2, bottom: 0.05, top: 0.05);
        return Figure("bytes-by-store", plot, 130 + 40 * runs.Count, runs.Count, bars.Count);
    }
}

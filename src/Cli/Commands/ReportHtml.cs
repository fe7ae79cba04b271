using System.Globalization;
using System.Net;
using System.Text;
using CriuSharp.Dumper.Migration;

namespace CriuSharp.Cli;

/// <summary>
/// One self-contained HTML page with hand-written inline SVG charts (no script, no external file):
/// dirty pages per iteration, cumulative bytes sent, and downtime per run split into its parts.
/// Every data point is an SVG element with class <c>mark</c> and a <c>data-run</c> attribute, so a
/// test (or a reader's browser tools) can find what was drawn.
/// </summary>
internal static class ReportHtml
{
    private static readonly string[] Palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
    private static readonly (string Name, string Color)[] DowntimeParts = [("frozen (final dump)", "#4c72b0"), ("transfer", "#dd8452"), ("restore", "#55a868")];

    private const int W = 640, H = 300, Left = 70, Right = 20, Top = 30, Bottom = 45;

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
          .Append("svg.chart{display:block;margin:8px 0 24px;background:#fff;border:1px solid #ddd}")
          .Append("svg text{font:11px system-ui,sans-serif;fill:#333}svg .title{font-size:13px;font-weight:600}")
          .Append(".grid{stroke:#eee}.axis{stroke:#888}.ok{color:#1a7f37}.bad{color:#c00;font-weight:600}\n</style></head><body>\n");
        sb.Append($"<h1>Live migration of {E(Path.GetFileName(first.Workload))}</h1>\n");
        sb.Append($"<p>{E(first.Workload)} on {E(first.Arch)}/{E(first.Kernel)}, tracker {E(first.Tracker)}, link {F(first.BandwidthBytesPerSecond / 1048576.0)} MiB/s. ")
          .Append("Downtime = frozen time of the final dump + transfer of the final images + restore time (virtual time of the cost model).</p>\n");

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

        sb.Append("<h2>Dirty pages per iteration</h2>\n<p>Pages written by each pre-dump and, last, by the final dump (hollow mark).</p>\n");
        sb.Append(LineChart("dirty-pages", "pages written per iteration (log scale)", runs,
            r => r.Iterations.Select(i => (double)i.PagesWritten).ToList(), log: true, unit: "pages"));
        sb.Append("<h2>Bytes sent per iteration</h2>\n<p>Every file of each image directory; runs with elision or deltas on carry +elide / +delta in their label.</p>\n");
        sb.Append(LineChart("bytes-per-iteration", "bytes sent per iteration (KiB, log scale)", runs,
            r => r.Iterations.Select(i => Math.Max(1.0, i.BytesSent / 1024.0)).ToList(), log: true, unit: "KiB"));
        sb.Append("<h2>Cumulative bytes sent</h2>\n");
        sb.Append(LineChart("bytes-sent", "cumulative bytes sent (MiB)", runs,
            r => { double s = 0; return r.Iterations.Select(i => s += i.BytesSent / 1048576.0).ToList(); }, log: false, unit: "MiB"));
        sb.Append("<h2>Downtime per run</h2>\n");
        sb.Append(DowntimeBars(runs));

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

    /// <summary>Axis ticks: about five round steps from 0 to at least <paramref name="max"/>.</summary>
    private static (double Top, double Step) NiceScale(double max)
    {
        if (max <= 0) return (1, 0.2);
        double raw = max / 5, mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1, 2, 2.5, 5, 10 }.Select(m => m * mag).First(s => s >= raw);
        return (Math.Ceiling(max / step) * step, step);
    }

    private static void Legend(StringBuilder sb, IReadOnlyList<(string Name, string Color)> items, int y)
    {
        int x = Left;
        foreach (var (name, color) in items)
        {
            sb.Append($"<rect x=\"{x}\" y=\"{y - 9}\" width=\"10\" height=\"10\" fill=\"{color}\"/><text x=\"{x + 14}\" y=\"{y}\">{E(name)}</text>");
            x += 24 + name.Length * 6;
        }
    }

    private static string LineChart(string id, string title, IReadOnlyList<MigrationResult> runs, Func<MigrationResult, List<double>> values, bool log, string unit)
    {
        var series = runs.Select(values).ToList();
        int maxN = Math.Max(1, series.Max(s => s.Count));
        double maxV = Math.Max(1, series.SelectMany(s => s).DefaultIfEmpty(1).Max());
        int pw = W - Left - Right, ph = H - Top - Bottom - 20;
        double X(int i) => Left + (maxN == 1 ? pw / 2.0 : i * pw / (double)(maxN - 1));
        Func<double, double> Y;
        var sb = new StringBuilder();
        sb.Append($"<svg class=\"chart\" id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{E(title)}\">");
        sb.Append($"<text class=\"title\" x=\"{Left}\" y=\"18\">{E(title)}</text>");
        if (log)
        {
            int decades = Math.Max(1, (int)Math.Ceiling(Math.Log10(maxV)));
            Y = v => Top + ph - Math.Log10(Math.Max(1, v)) / decades * ph;
            for (int d = 0; d <= decades; d++)
            {
                double y = Y(Math.Pow(10, d));
                sb.Append($"<line class=\"grid\" x1=\"{Left}\" x2=\"{W - Right}\" y1=\"{F(y)}\" y2=\"{F(y)}\"/><text x=\"{Left - 6}\" y=\"{F(y + 4)}\" text-anchor=\"end\">{Math.Pow(10, d):0}</text>");
            }
        }
        else
        {
            var (top, step) = NiceScale(maxV);
            Y = v => Top + ph - v / top * ph;
            for (double t = 0; t <= top + step / 2; t += step)
                sb.Append($"<line class=\"grid\" x1=\"{Left}\" x2=\"{W - Right}\" y1=\"{F(Y(t))}\" y2=\"{F(Y(t))}\"/><text x=\"{Left - 6}\" y=\"{F(Y(t) + 4)}\" text-anchor=\"end\">{F(t)}</text>");
        }
        sb.Append($"<line class=\"axis\" x1=\"{Left}\" x2=\"{Left}\" y1=\"{Top}\" y2=\"{Top + ph}\"/><line class=\"axis\" x1=\"{Left}\" x2=\"{W - Right}\" y1=\"{Top + ph}\" y2=\"{Top + ph}\"/>");
        for (int i = 0; i < maxN; i++)
            sb.Append($"<text x=\"{F(X(i))}\" y=\"{Top + ph + 16}\" text-anchor=\"middle\">{i + 1}</text>");
        sb.Append($"<text x=\"{Left + pw / 2}\" y=\"{Top + ph + 32}\" text-anchor=\"middle\">iteration (last = final dump)</text>");
        // Longest series first, so shorter ones (which share their first iterations) stay visible on top.
        foreach (int s in Enumerable.Range(0, series.Count).OrderByDescending(i => series[i].Count))
        {
            string color = Palette[s % Palette.Length], run = E(Label(runs[s]));
            var pts = series[s];
            if (pts.Count > 1)
                sb.Append($"<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{string.Join(' ', pts.Select((v, i) => $"{F(X(i))},{F(Y(v))}"))}\"/>");
            for (int i = 0; i < pts.Count; i++)
            {
                bool last = i == pts.Count - 1;
                sb.Append($"<circle class=\"mark\" data-run=\"{run}\" data-value=\"{F(pts[i])}\" cx=\"{F(X(i))}\" cy=\"{F(Y(pts[i]))}\" r=\"{(last ? 5 : 3.5)}\" fill=\"{(last ? "#fff" : color)}\" stroke=\"{color}\" stroke-width=\"2\"><title>{run}, iteration {i + 1}: {F(pts[i])} {unit}</title></circle>");
            }
        }
        Legend(sb, runs.Select((r, s) => (Label(r), Palette[s % Palette.Length])).ToList(), H - 6);
        sb.Append("</svg>\n");
        return sb.ToString();
    }

    private static string DowntimeBars(IReadOnlyList<MigrationResult> runs)
    {
        int barH = 18, gap = 10, labelW = 150;
        int h = Top + runs.Count * (barH + gap) + 50;
        double maxMs = Math.Max(0.001, runs.Max(r => r.Downtime.TotalNs / 1e6));
        var (top, step) = NiceScale(maxMs);
        int pw = W - labelW - Right;
        double X(double ms) => labelW + ms / top * pw;
        var sb = new StringBuilder();
        sb.Append($"<svg class=\"chart\" id=\"downtime\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{h}\" viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"downtime per run\">");
        sb.Append($"<text class=\"title\" x=\"{Left}\" y=\"18\">downtime (ms) = frozen + transfer + restore</text>");
        int plotBottom = Top + runs.Count * (barH + gap);
        for (double t = 0; t <= top + step / 2; t += step)
            sb.Append($"<line class=\"grid\" x1=\"{F(X(t))}\" x2=\"{F(X(t))}\" y1=\"{Top}\" y2=\"{plotBottom}\"/><text x=\"{F(X(t))}\" y=\"{plotBottom + 14}\" text-anchor=\"middle\">{F(t)}</text>");
        for (int i = 0; i < runs.Count; i++)
        {
            var r = runs[i];
            string run = E(Label(r));
            int y = Top + i * (barH + gap);
            sb.Append($"<text x=\"{labelW - 6}\" y=\"{y + barH - 5}\" text-anchor=\"end\">{run}</text>");
            double x = 0;
            ulong[] parts = [r.Downtime.FrozenNs, r.Downtime.TransferNs, r.Downtime.RestoreNs];
            for (int p = 0; p < parts.Length; p++)
            {
                double ms = parts[p] / 1e6;
                sb.Append($"<rect class=\"mark\" data-run=\"{run}\" data-part=\"{DowntimeParts[p].Name}\" data-value=\"{F(ms)}\" x=\"{F(X(x))}\" y=\"{y}\" width=\"{F(Math.Max(0, X(x + ms) - X(x)))}\" height=\"{barH}\" fill=\"{DowntimeParts[p].Color}\"><title>{run}: {DowntimeParts[p].Name} {F(ms)} ms</title></rect>");
                x += ms;
            }
            sb.Append($"<text x=\"{F(X(x) + 4)}\" y=\"{y + barH - 5}\">{F(x)} ms</text>");
        }
        sb.Append($"<line class=\"axis\" x1=\"{labelW}\" x2=\"{labelW}\" y1=\"{Top}\" y2=\"{plotBottom}\"/>");
        Legend(sb, DowntimeParts, h - 8);
        sb.Append("</svg>\n");
        return sb.ToString();
    }
}

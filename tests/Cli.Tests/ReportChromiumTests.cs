using System.Diagnostics;
using System.IO.Compression;
using System.Text.RegularExpressions;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// Opens the report in headless Chromium (Debian's <c>chromium</c>; run-tests.sh installs it) and
/// checks the charts really render: the SVG elements and their data marks are in the DOM the
/// browser built, and a screenshot shows the series' colours.
/// </summary>
public class ReportChromiumTests : IClassFixture<MigrateScratch>
{
    private readonly MigrateScratch _s;
    public ReportChromiumTests(MigrateScratch s) => _s = s;

    private static readonly string[] ChromiumPaths = ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];

    private static string Chromium() =>
        ChromiumPaths.FirstOrDefault(File.Exists)
        ?? throw new Xunit.Sdk.XunitException("chromium is not installed: apt-get install chromium (./run-tests.sh installs it)");

    private static (int Code, string Out, string Err) Browse(string profile, params string[] args)
    {
        var psi = new ProcessStartInfo(Chromium()) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--user-data-dir=" + profile })
            psi.ArgumentList.Add(a);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(90_000))
        {
            p.Kill(true);
            throw new TimeoutException("chromium did not finish in 90 s");
        }
        return (p.ExitCode, stdout, err.Result);
    }

    /// <summary>Rows of the per-iteration tables: one data point per iteration in the line charts.</summary>
    private static int ExpectedIterations(string html)
    {
        string text = File.ReadAllText(html);
        int tables = text.IndexOf("<h2>Iterations</h2>", StringComparison.Ordinal);
        return Regex.Count(text[tables..], "<tr><td>");
    }

    [Fact]
    public void ChartsRenderInChromium()
    {
        string html = Path.Combine(_s.Dir, "chromium-report.html");
        var r = CliRunner.Run(["report", .. _s.Args("--policies", "phaul,none", "-o", html)]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        string url = new Uri(html).AbsoluteUri;
        string profile = Path.Combine(_s.Dir, "chromium-profile");

        // The DOM Chromium built from the file.
        var dom = Browse(profile, "--dump-dom", url);
        Assert.True(dom.Code == 0, dom.Err);
        // Each chart is a figure holding ScottPlot's inline SVG, with how much it drew.
        int iterations = ExpectedIterations(html);
        foreach (var (id, points) in new[] { ("dirty-pages", iterations), ("bytes-sent", iterations), ("downtime", 2 * 3), ("bytes-by-store", 2) })
        {
            var m = Regex.Match(dom.Out, $"<figure class=\"chart\" id=\"{id}\" data-series=\"(\\d+)\" data-points=\"(\\d+)\"><svg[^>]*>(.*?)</svg>\\s*</figure>", RegexOptions.Singleline);
            Assert.True(m.Success, $"figure {id} with an inline svg");
            Assert.Equal("2", m.Groups[1].Value); // two runs
            Assert.Equal(points.ToString(System.Globalization.CultureInfo.InvariantCulture), m.Groups[2].Value);
            Assert.True(Regex.Count(m.Groups[3].Value, "<path") > 10, $"figure {id} draws something");
        }
        Assert.DoesNotContain("<?xml", File.ReadAllText(html));

        // A screenshot: not blank, and the first series' and the bars' colours are on it.
        string png = Path.Combine(_s.Dir, "report.png");
        var shot = Browse(profile, "--screenshot=" + png, "--window-size=1000,1600", "--hide-scrollbars", url);
        Assert.True(File.Exists(png), shot.Err);
        var (w, h, px) = Png.Decode(File.ReadAllBytes(png));
        Assert.Equal(1000, w);
        var colours = new HashSet<int>();
        for (int i = 0; i < w * h; i++)
            colours.Add(px[i]);
        Assert.True(colours.Count > 20, $"a blank page has one colour; got {colours.Count}");
        Assert.Contains(0x1f77b4, colours); // first run's line and markers
        Assert.Contains(0x4c72b0, colours); // frozen part of the downtime bars
    }
}

/// <summary>Just enough of PNG to read Chromium's screenshots: 8-bit RGB or RGBA, not interlaced.</summary>
internal static class Png
{
    public static (int Width, int Height, int[] Rgb) Decode(byte[] file)
    {
        int pos = 8, width = 0, height = 0, channels = 0;
        var idat = new MemoryStream();
        while (pos < file.Length)
        {
            int len = (file[pos] << 24) | (file[pos + 1] << 16) | (file[pos + 2] << 8) | file[pos + 3];
            string type = System.Text.Encoding.ASCII.GetString(file, pos + 4, 4);
            var data = file.AsSpan(pos + 8, len);
            if (type == "IHDR")
            {
                width = (data[0] << 24) | (data[1] << 16) | (data[2] << 8) | data[3];
                height = (data[4] << 24) | (data[5] << 16) | (data[6] << 8) | data[7];
                Assert.Equal(8, data[8]);
                channels = data[9] switch { 2 => 3, 6 => 4, var c => throw new NotSupportedException($"PNG colour type {c}") };
                Assert.Equal(0, data[12]);
            }
            else if (type == "IDAT")
                idat.Write(data);
            pos += 12 + len;
        }
        idat.Position = 0;
        var raw = new MemoryStream();
        using (var z = new ZLibStream(idat, CompressionMode.Decompress))
            z.CopyTo(raw);
        var bytes = raw.ToArray();
        int stride = width * channels;
        var prev = new byte[stride];
        var cur = new byte[stride];
        var rgb = new int[width * height];
        for (int y = 0; y < height; y++)
        {
            int f = bytes[y * (stride + 1)];
            Array.Copy(bytes, y * (stride + 1) + 1, cur, 0, stride);
            for (int i = 0; i < stride; i++)
            {
                int a = i >= channels ? cur[i - channels] : 0, b = prev[i], c = i >= channels ? prev[i - channels] : 0;
                cur[i] = (byte)(cur[i] + f switch
                {
                    0 => 0,
                    1 => a,
                    2 => b,
                    3 => (a + b) / 2,
                    4 => Paeth(a, b, c),
                    _ => throw new NotSupportedException($"PNG filter {f}"),
                });
            }
            for (int x = 0; x < width; x++)
                rgb[y * width + x] = (cur[x * channels] << 16) | (cur[x * channels + 1] << 8) | cur[x * channels + 2];
            (prev, cur) = (cur, prev);
        }
        return (width, height, rgb);
    }

    private static int Paeth(int a, int b, int c)
    {
        int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
        return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
    }
}

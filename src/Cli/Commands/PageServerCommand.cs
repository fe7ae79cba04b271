using System.CommandLine;
using System.Text.Json;
using CriuSharp.Dumper.PageServer;
using CriuSharp.ImageFormat;

namespace CriuSharp.Cli;

/// <summary><c>page-server</c>: receive pages from pre-dump/dump --page-server into -D, as <c>criu page-server</c>.</summary>
public static class PageServerCommand
{
    public static Command Create()
    {
        var dir = new Option<string>("--images-dir", "-D") { Description = "Directory the pagemap and pages images are written into.", Required = true };
        var prev = new Option<string?>("--prev-images-dir") { Description = "Parent image set, relative to the images directory; written as the 'parent' link and answered to PARENT/OPEN2." };
        var compress = new Option<string>("--compress") { Description = "How the received pages are stored: lz4, zstd, or none (CRIU's raw pages-N.img).", DefaultValueFactory = _ => "lz4" };
        compress.AcceptOnlyFromAmong("lz4", "zstd", "none");
        var blockKiB = new Option<int>("--block-size") { Description = "Compression block size in KiB, 4 to 256.", DefaultValueFactory = _ => 64 };
        var sessions = new Option<int>("--sessions") { Description = "Exit after this many sessions ended with CLOSE (CRIU's page server serves one); 0 = never.", DefaultValueFactory = _ => 1 };
        var noExt = new Option<bool>("--no-extensions") { Description = "Refuse criu-sharp's protocol extensions (PS_IOV_FEATURES, delta pages), as CRIU's page server does: a client asking for them is disconnected." };
        var json = CommonOptions.Json();
        var net = new PageServerCliOptions();
        var cmd = new Command("page-server",
            "Receive pages over TCP with CRIU's page-xfer protocol and write pagemap-*.img and pages-*.img into -D (criu page-server). " +
            "Speaks the current 32-byte header by default; --ps-layout pre-4.2 speaks the 24-byte one of CRIU 4.1 and earlier. " +
            "Prints 'listening on ADDRESS:PORT' first; a connection that breaks the protocol is closed with one line on stderr and the next is served.");
        foreach (var o in new Option[] { dir, prev, compress, blockKiB, sessions, noExt, json })
            cmd.Options.Add(o);
        net.AddTo(cmd);
        cmd.SetAction(p =>
        {
            int kib = p.GetValue(blockKiB);
            if (kib < 4 || kib > 256 || kib % 4 != 0)
                throw new UserException(ExitCode.Usage, $"--block-size {kib}: must be a multiple of 4 from 4 to 256 (KiB)");
            int n = p.GetValue(sessions);
            if (n < 0)
                throw new UserException(ExitCode.Usage, $"--sessions {n}: must be 0 or more");
            var options = new PageServerOptions
            {
                ImagesDir = Path.GetFullPath(p.GetValue(dir)!),
                PrevImagesDir = p.GetValue(prev),
                Address = p.GetValue(net.Address) is { Length: > 0 } a ? a : "0.0.0.0",
                Port = net.ParsedPort(p, allowZero: true),
                Layout = net.ParsedLayout(p),
                Tls = net.ParsedTls(p),
                IdleTimeout = net.ParsedTimeout(p),
                Sessions = n,
                Extensions = !p.GetValue(noExt),
                PageStore = p.GetValue(compress) switch
                {
                    "none" => PageStoreOptions.Raw,
                    "zstd" => PageStoreOptions.Zstd(kib / 4),
                    _ => PageStoreOptions.Lz4(kib / 4),
                },
            };
            var o = p.InvocationConfiguration.Output;
            var err = p.InvocationConfiguration.Error;
            using var listener = PageServerListener.Start(options);
            o.WriteLine($"listening on {listener.Address}:{listener.Port}");
            o.Flush();
            using var cts = new CancellationTokenSource();
            ConsoleCancelEventHandler stop = (_, e) => { e.Cancel = true; cts.Cancel(); };
            Console.CancelKeyPress += stop;
            IReadOnlyList<PageServerSessionResult> results;
            try
            {
                results = listener.Serve(line => { err.WriteLine($"criu-sharp: {line}"); err.Flush(); }, cts.Token);
            }
            finally
            {
                Console.CancelKeyPress -= stop;
            }
            if (p.GetValue(json))
                o.WriteLine(JsonSerializer.Serialize(new { images_dir = options.ImagesDir, sessions = results }, JsonOut.Options));
            return cts.IsCancellationRequested && !results.Any(r => r.Closed) ? (int)ExitCode.Environment : 0;
        });
        return cmd;
    }
}

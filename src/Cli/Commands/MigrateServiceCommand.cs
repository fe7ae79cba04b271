using System.CommandLine;
using System.Text.Json;
using CriuSharp.Migration;

namespace CriuSharp.Cli;

/// <summary>
/// <c>migrate-service</c>: the destination of <c>migrate --transport tcp</c>, as P.Haul's
/// p.haul-service. <c>migrate</c> starts one on loopback itself; start one by hand (for example in
/// another network namespace) and give <c>migrate --address A --port N</c> to migrate to it.
/// </summary>
public static class MigrateServiceCommand
{
    public static Command Create()
    {
        var dir = new Option<string>("--images-dir", "-D") { Description = "Where the received image directories go (DIR/1, DIR/2, ..., each with its parent link); must be empty or absent.", Required = true };
        var machine = new Option<string>("--machine", "-m") { Description = "Machine directory the tree is restored into (created; must not hold a machine).", Required = true };
        var address = new Option<string>("--address") { Description = "Address to listen on (the page servers it starts listen on the address the source reached).", DefaultValueFactory = _ => "0.0.0.0" };
        var port = new Option<int>("--port") { Description = "TCP port of the control connection; 0 picks a free one.", DefaultValueFactory = _ => 0 };
        var timeout = new Option<int>("--ps-timeout") { Description = "Seconds any wait for the source may take (its connection, a request, a page-server session, a lazy page).", DefaultValueFactory = _ => 60 };
        var json = CommonOptions.Json();
        var net = new PageServerCliOptions();
        var cmd = new Command("migrate-service",
            "The destination of 'migrate --transport tcp' (P.Haul's p.haul-service): serves one source, receiving each pre-dump and dump through a page server " +
            "(CRIU's page-xfer protocol) and the other images over its control connection, pre-loading them when asked, then restores the tree into --machine " +
            "(lazily, fetching pages from the source's page server, for post-copy and hybrid) and verifies it. Prints 'listening on ADDRESS:PORT' first. " +
            "Until the restore is verified, -D carries an incomplete marker; a lost source ends it with one line and exit code 7. " +
            "With --tls (CRIU's options) the control connection, the page servers and the lazy page session are TLS, and a source without a certificate the CA signed is refused (exit 7).");
        foreach (var o in new Option[] { dir, machine, address, port, timeout, json })
            cmd.Options.Add(o);
        net.AddTlsTo(cmd);
        cmd.SetAction(p =>
        {
            int n = p.GetValue(port);
            if (n < 0 || n > 65535)
                throw new UserException(ExitCode.Usage, $"--port {n}: must be 0 to 65535");
            int s = p.GetValue(timeout);
            if (s < 1 || s > 86400)
                throw new UserException(ExitCode.Usage, $"--ps-timeout {s}: must be 1 to 86400 seconds");
            var o = p.InvocationConfiguration.Output;
            var err = p.InvocationConfiguration.Error;
            using var service = MigrationService.Start(new MigrationServiceOptions
            {
                ImagesDir = p.GetValue(dir)!,
                MachineDir = p.GetValue(machine)!,
                Address = p.GetValue(address)!,
                Port = n,
                IoTimeout = TimeSpan.FromSeconds(s),
                Tls = net.ParsedTls(p),
            });
            o.WriteLine($"listening on {service.Address}:{service.Port}");
            o.Flush();
            bool asJson = p.GetValue(json);
            var r = service.ServeOne(asJson ? null : line => { err.WriteLine($"criu-sharp: {line}"); err.Flush(); });
            if (!r.Completed)
                throw new UserException(ExitCode.Environment, $"migrate-service: {r.Error}", "The images directory stays marked incomplete; rerun the migration.");
            if (asJson)
                o.WriteLine(JsonSerializer.Serialize(new
                {
                    images_dir = Path.GetFullPath(p.GetValue(dir)!),
                    machine = Path.GetFullPath(p.GetValue(machine)!),
                    peer = r.Peer,
                    image_dirs = r.ImageDirs,
                    restored = r.Restored,
                }, JsonOut.Options));
            return r.Restored ? 0 : (int)ExitCode.CheckFailed;
        });
        return cmd;
    }
}

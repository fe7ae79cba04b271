using System.Diagnostics;
using System.Net.Sockets;
using CriuSharp.ImageFormat.Rpc;
using CriuSharp.SimKernel.Machine;
using Google.Protobuf;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// <c>criu-sharp service</c> under clients that misbehave: garbage, oversized and unknown
/// requests, clients that vanish in the middle of a request or of a notification, 50 connections
/// at once. Each gets an answer or a closed connection; the service keeps serving; the machine is
/// never left locked.
/// </summary>
public class RpcServiceTests
{
    private const string Workload = """
        { "seed": 5, "processes": [ { "name": "hot",
            "mappings": [ { "name": "heap", "size": "2MiB" } ],
            "behaviour": { "type": "hotcold", "mapping": "heap", "distribution": "hot", "hot_fraction": 0.02, "hot_share": 1.0, "pages_per_second": 5000, "prefill": true } } ] }
        """;

    private const int EPROTO = 71, EMSGSIZE = 90, EBADRQC = 56, ESRCH = 3, EOPNOTSUPP = 95;

    [Fact]
    public void Service_AnswersOrClosesEveryMisbehavingClientAndKeepsServing()
    {
        using var work = new TempMachine();
        Directory.CreateDirectory(work.Dir);
        string machine = Path.Combine(work.Dir, "m");
        using var service = Service.ForSpawned(work, machine, "criu_service.socket");

        // Garbage: not a protobuf message.
        using (var c = service.Connect())
        {
            c.SendRaw([0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]);
            var r = c.Receive()!;
            Assert.Equal(criu_req_type.Empty, r.Type);
            Assert.False(r.Success);
            Assert.Equal(EPROTO, r.CrErrno);
            Assert.StartsWith("malformed request", r.CrErrmsg);
            Assert.Null(c.Receive());
        }
        // A well-formed message without the required type.
        using (var c = service.Connect())
        {
            c.SendRaw([0x18, 0x01]);
            Assert.Equal(EPROTO, c.Receive()!.CrErrno);
        }
        // Larger than the maximum request: answered without being read whole.
        using (var c = service.Connect())
        {
            c.SendRaw(new byte[100_000]);
            var r = c.Receive()!;
            Assert.Equal(EMSGSIZE, r.CrErrno);
            Assert.Contains("exceeds the maximum", r.CrErrmsg);
        }
        // An unknown request type, then a request CRIU would answer but this build cannot.
        using (var c = service.Connect())
        {
            c.SendRaw([0x08, 0x63]);
            var r = c.Receive()!;
            Assert.Equal((criu_req_type.Empty, EBADRQC), (r.Type, r.CrErrno));
        }
        using (var c = service.Connect())
        {
            c.Send(new criu_req { Type = criu_req_type.PageServerChld, KeepOpen = true, Opts = new criu_opts { ImagesDir = work.Dir, LazyPages = true } });
            var r = c.Receive()!;
            Assert.Equal((criu_req_type.PageServerChld, false, EOPNOTSUPP), (r.Type, r.Success, r.CrErrno));
            Assert.Contains("lazy", r.CrErrmsg);
            // keep_open: the connection serves on.
            c.Send(new criu_req { Type = criu_req_type.Version });
            Assert.True(c.Receive()!.Success);
        }
        // A page server started over RPC receives a pre-dump sent with opts.ps, as CRIU's.
        string received = Dir(work.Dir, "received"), local = Dir(work.Dir, "local");
        using (var c = service.Connect())
        {
            c.Send(new criu_req { Type = criu_req_type.PageServerChld, KeepOpen = true, Opts = new criu_opts { ImagesDir = received, Ps = new criu_page_server_info { Address = "127.0.0.1", Port = 0 } } });
            var r = c.Receive()!;
            Assert.True(r.Success, r.CrErrmsg);
            Assert.True(r.Ps.Port > 0);
            c.Send(new criu_req { Type = criu_req_type.PreDump, Opts = new criu_opts { ImagesDir = local, Pid = 1000, Ps = new criu_page_server_info { Address = "127.0.0.1", Port = r.Ps.Port } } });
            var d = c.Receive()!;
            Assert.True(d.Success, d.CrErrmsg);
        }
        Assert.True(File.Exists(Path.Combine(received, "pagemap-1000.img")));
        Assert.False(File.Exists(Path.Combine(local, "pagemap-1000.img")));
        // A dump of a pid the machine does not have: one line, ESRCH, as CRIU.
        using (var c = service.Connect())
        {
            c.Send(new criu_req { Type = criu_req_type.Dump, Opts = new criu_opts { ImagesDir = work.Dir, Pid = 4242 } });
            var r = c.Receive()!;
            Assert.Equal((criu_req_type.Dump, false, ESRCH), (r.Type, r.Success, r.CrErrno));
            Assert.DoesNotContain('\n', r.CrErrmsg);
            Assert.NotNull(r.Dump);
        }

        // A client that leaves right after sending a dump request: the dump runs, the answer is lost.
        string img1 = Path.Combine(work.Dir, "img1");
        Directory.CreateDirectory(img1);
        using (var c = service.Connect())
            c.Send(new criu_req { Type = criu_req_type.PreDump, Opts = new criu_opts { ImagesDir = img1, Pid = 1000 } });
        // A client that leaves in the middle of the dump's pre-dump notification: nothing is dumped.
        string img2 = Path.Combine(work.Dir, "img2");
        Directory.CreateDirectory(img2);
        using (var c = service.Connect())
        {
            c.Send(new criu_req { Type = criu_req_type.Dump, Opts = new criu_opts { ImagesDir = img2, Pid = 1000, NotifyScripts = true } });
            var n = c.Receive()!;
            Assert.Equal((criu_req_type.Notify, "pre-dump"), (n.Type, n.Notify.Script));
        }

        // 50 clients at once, every one answered: version, check, feature checks and pre-dumps that
        // queue on the machine's lock.
        var clients = Enumerable.Range(0, 50).Select(_ => service.Connect()).ToList();
        try
        {
            for (int i = 0; i < clients.Count; i++)
            {
                var req = (i % 5) switch
                {
                    0 => new criu_req { Type = criu_req_type.PreDump, Opts = new criu_opts { ImagesDir = Dir(work.Dir, $"many{i}"), Pid = 1000 } },
                    1 => new criu_req { Type = criu_req_type.Check },
                    2 => new criu_req { Type = criu_req_type.FeatureCheck, Features = new criu_features { MemTrack = true } },
                    _ => new criu_req { Type = criu_req_type.Version },
                };
                clients[i].Send(req);
            }
            for (int i = 0; i < clients.Count; i++)
            {
                var r = clients[i].Receive();
                Assert.True(r is { Success: true }, $"client {i}: {r?.CrErrmsg ?? "no answer"}");
            }
        }
        finally
        {
            clients.ForEach(c => c.Dispose());
        }
        for (int i = 0; i < 50; i += 5)
            Assert.True(File.Exists(Path.Combine(work.Dir, $"many{i}", "pagemap-1000.img")), $"many{i}");

        // Still serving; the machine is free and its workload alive (a CHECK waits for the lock, so
        // every request above has finished when it is answered).
        using (var c = service.Connect())
        {
            c.Send(new criu_req { Type = criu_req_type.Check });
            Assert.True(c.Receive()!.Success);
        }
        using (var m = SimMachine.Open(machine, TimeSpan.Zero))
            Assert.True(m.Kernel.FindTask(1000)!.Alive);
        Assert.True(File.Exists(Path.Combine(img1, "pagemap-1000.img")));
        Assert.False(File.Exists(Path.Combine(img2, "pagemap-1000.img")));

        Assert.Equal(0, service.Stop());
        Assert.False(File.Exists(service.Address));
    }

    [Fact]
    public void Service_KeepOpenRunsPreDumpsDumpAndRestoreOnOneConnection()
    {
        using var work = new TempMachine();
        Directory.CreateDirectory(work.Dir);
        string source = Path.Combine(work.Dir, "source"), dest = Path.Combine(work.Dir, "dest");
        using var service = Service.ForSpawned(work, source);
        using var c = service.Connect();
        criu_resp Ask(criu_req req, params bool[] answers)
        {
            c.Send(req);
            foreach (bool ok in answers)
            {
                var n = c.Receive()!;
                Assert.Equal(criu_req_type.Notify, n.Type);
                c.Send(new criu_req { Type = criu_req_type.Notify, NotifySuccess = ok });
            }
            return c.Receive()!;
        }
        Assert.True(Ask(new criu_req { Type = criu_req_type.PreDump, KeepOpen = true, Opts = new criu_opts { ImagesDir = Dir(work.Dir, "1"), Pid = 1000 } }).Success);
        // post-dump refused by the client: the dump fails with the images complete and the tree running.
        var refused = Ask(new criu_req { Type = criu_req_type.Dump, KeepOpen = true, Opts = new criu_opts { ImagesDir = Dir(work.Dir, "x"), Pid = 1000, ParentImg = "../1", NotifyScripts = true } }, true, false);
        Assert.False(refused.Success);
        Assert.Contains("post-dump", refused.CrErrmsg);
        // A failed dump ends the conversation, as in CRIU.
        Assert.Null(c.Receive());

        using var c2 = service.Connect();
        c2.Send(new criu_req { Type = criu_req_type.Dump, KeepOpen = true, Opts = new criu_opts { ImagesDir = Dir(work.Dir, "2"), Pid = 1000, ParentImg = "../1" } });
        Assert.True(c2.Receive()!.Success);
        c2.Send(new criu_req { Type = criu_req_type.Restore, KeepOpen = true, Opts = new criu_opts { ImagesDir = Path.Combine(work.Dir, "2"), SimMachine = dest } });
        var restored = c2.Receive()!;
        Assert.True(restored.Success, restored.CrErrmsg);
        Assert.Equal(1000, restored.Restore.Pid);

        // CRIU's pre-dump loop: after a PRE_DUMP without keep_open only PRE_DUMP or DUMP may follow.
        // A failed request leaves its log in the images directory; a retry with the same log_file
        // is not refused for it.
        using (var c5 = service.Connect())
        {
            c5.Send(new criu_req { Type = criu_req_type.PreDump, Opts = new criu_opts { ImagesDir = Dir(work.Dir, "3"), Pid = 4242, SimMachine = dest, LogFile = "pre.log" } });
            Assert.Equal(ESRCH, c5.Receive()!.CrErrno);
        }
        Assert.Contains("Error (PRE_DUMP): no process 4242", File.ReadAllText(Path.Combine(work.Dir, "3", "pre.log")));
        using (var c3 = service.Connect())
        {
            c3.Send(new criu_req { Type = criu_req_type.PreDump, Opts = new criu_opts { ImagesDir = Path.Combine(work.Dir, "3"), Pid = 1000, SimMachine = dest, LogFile = "pre.log" } });
            Assert.True(c3.Receive()!.Success);
            c3.Send(new criu_req { Type = criu_req_type.Version });
            var seq = c3.Receive()!;
            Assert.Equal((criu_req_type.Empty, false, EBADRQC), (seq.Type, seq.Success, seq.CrErrno));
            Assert.Contains("bad request sequence", seq.CrErrmsg);
            Assert.Null(c3.Receive());
        }
        // WAIT_PID: no such task is ECHILD; on a live task it waits, and a client that gives up
        // leaves nothing locked.
        using (var c4 = service.Connect())
        {
            c4.Send(new criu_req { Type = criu_req_type.WaitPid, Pid = 4242, KeepOpen = true, Opts = new criu_opts { SimMachine = dest } });
            var none = c4.Receive()!;
            Assert.Equal((criu_req_type.WaitPid, false, 10), (none.Type, none.Success, none.CrErrno));
            c4.Send(new criu_req { Type = criu_req_type.WaitPid, Pid = 1000, Opts = new criu_opts { SimMachine = dest } });
        }
        Assert.Equal(0, service.Stop());
        using (var m = SimMachine.Open(dest, TimeSpan.Zero))
            Assert.True(m.Kernel.FindTask(1000)!.Alive);
        Assert.Contains("1000 hotcold: ok", CliRunner.RunProcess(work.Dir, "verify", "--machine", dest).Out);
    }

    [Fact]
    public void Service_LeaveStopped_PreDumpModeRead_AndTimeout()
    {
        using var work = new TempMachine();
        Directory.CreateDirectory(work.Dir);
        string source = Path.Combine(work.Dir, "source"), dest = Path.Combine(work.Dir, "dest");
        using var service = Service.ForSpawned(work, source);
        criu_resp Ask(criu_req req) => service.Ask(req);
        string State(string machine) => CliRunner.Run("ps", "--machine", machine).Out.Split('\n')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries)[2];

        var pre = Ask(new criu_req { Type = criu_req_type.PreDump, Opts = new criu_opts { ImagesDir = Dir(work.Dir, "1"), Pid = 1000, PreDumpMode = criu_pre_dump_mode.VmRead } });
        Assert.True(pre.Success, pre.CrErrmsg);
        Assert.Equal(2u, CriuSharp.ImageFormat.ImageSet.Open(Path.Combine(work.Dir, "1")).ReadInventory().PreDumpMode);

        var dump = Ask(new criu_req { Type = criu_req_type.Dump, Opts = new criu_opts { ImagesDir = Dir(work.Dir, "2"), Pid = 1000, ParentImg = "../1", LeaveStopped = true, Timeout = 30 } });
        Assert.True(dump.Success, dump.CrErrmsg);
        Assert.Equal("stopped", State(source));

        var restore = Ask(new criu_req { Type = criu_req_type.Restore, Opts = new criu_opts { ImagesDir = Path.Combine(work.Dir, "2"), SimMachine = dest, LeaveStopped = true } });
        Assert.True(restore.Success, restore.CrErrmsg);
        Assert.Equal("stopped", State(dest));
        Assert.Equal(0, service.Stop());
    }

    [Fact]
    public async Task Service_RestoresLazily_ForTheLazyPagesDaemon_AndRefusesALazyDump()
    {
        using var work = new TempMachine();
        Directory.CreateDirectory(work.Dir);
        string source = Path.Combine(work.Dir, "source"), dest = Path.Combine(work.Dir, "dest"), img = Path.Combine(work.Dir, "img");
        using var service = Service.ForSpawned(work, source);
        criu_resp Ask(criu_req req) => service.Ask(req);
        // criu_opts.lazy_pages on DUMP: refused (the lazy dump serves its pages from the CLI).
        var lazyDump = Ask(new criu_req { Type = criu_req_type.Dump, Opts = new criu_opts { ImagesDir = Dir(work.Dir, "refused"), Pid = 1000, LazyPages = true } });
        Assert.False(lazyDump.Success);
        Assert.Equal(EOPNOTSUPP, lazyDump.CrErrno);
        Assert.Contains("dump --lazy-pages", lazyDump.CrErrmsg);

        // The source: dump --lazy-pages serving on loopback.
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll"));
        foreach (var a in new[] { "dump", "-m", source, "-t", "1000", "-D", img, "--lazy-pages", "--address", "127.0.0.1", "--port", "0", "--ps-timeout", "60" })
            psi.ArgumentList.Add(a);
        psi.Environment.Remove("CRIU_SHARP_MACHINE");
        using var dump = Process.Start(psi)!;
        var err = dump.StandardError.ReadToEndAsync();
        string? port = null;
        while (port is null && dump.StandardOutput.ReadLine() is { } line)
            if (line.StartsWith("listening on ", StringComparison.Ordinal))
                port = line[(line.LastIndexOf(':') + 1)..];
        Assert.True(port is not null, "dump --lazy-pages did not listen");

        // RESTORE without lazy_pages is refused with the reason; with it, the tree is restored
        // with its lazy pages missing and the machine marked until the daemon has them.
        var plain = Ask(new criu_req { Type = criu_req_type.Restore, Opts = new criu_opts { ImagesDir = img, SimMachine = Path.Combine(work.Dir, "plain") } });
        Assert.False(plain.Success);
        Assert.Contains("lazy", plain.CrErrmsg);
        var restore = Ask(new criu_req { Type = criu_req_type.Restore, Opts = new criu_opts { ImagesDir = img, SimMachine = dest, LazyPages = true } });
        Assert.True(restore.Success, restore.CrErrmsg);
        Assert.Equal(1000, restore.Restore.Pid);
        Assert.True(File.Exists(Path.Combine(dest, SimMachine.LazyRestoreMarkerName)));
        Assert.Equal((int)ExitCode.BadImage, CliRunner.Run("verify", "--machine", dest).Code);

        var daemon = CliRunner.Run("lazy-pages", "--machine", dest, "-D", img, "--page-server", "--address", "127.0.0.1", "--port", port!);
        Assert.True(daemon.Code == 0, daemon.Out + daemon.Err);
        Assert.True(dump.WaitForExit(60_000), "the source kept serving after CLOSE");
        Assert.True(dump.ExitCode == 0, await err);
        Assert.False(File.Exists(Path.Combine(dest, SimMachine.LazyRestoreMarkerName)));
        var v = CliRunner.Run("verify", "--machine", dest);
        Assert.True(v.Code == 0, v.Out + v.Err);
        Assert.Equal(0, service.Stop());
    }

    private static string Dir(string root, string name)
    {
        string d = Path.Combine(root, name);
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>A <c>criu-sharp service</c> process on a socket in the test's own directory.</summary>
    private sealed class Service : IDisposable
    {
        private readonly Process _p;
        private readonly string _address;

        private Service(Process p, string address)
        {
            _p = p;
            _address = address;
        }

        public static Service Start(string address, string machine)
        {
            var psi = new ProcessStartInfo(RpcClientTests.Apphost()) { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { "service", "--address", address, "--machine", machine })
                psi.ArgumentList.Add(a);
            psi.Environment.Remove("CRIU_SHARP_MACHINE");
            var p = Process.Start(psi)!;
            p.ErrorDataReceived += (_, _) => { };
            p.BeginErrorReadLine();
            string? line = p.StandardOutput.ReadLine();
            Assert.True(line is not null && line.Contains("listening on"), $"service did not start: {line}");
            return new Service(p, address);
        }

        public string Address => _address;

        public Client Connect() => new(_address);

        /// <summary>One request on its own connection, as pycriu's default (not keep_open) client sends it.</summary>
        public criu_resp Ask(criu_req req)
        {
            using var c = Connect();
            c.Send(req);
            return c.Receive()!;
        }

        /// <summary>Spawns the test workload into <paramref name="machine"/> under <paramref name="work"/> and serves that machine.</summary>
        public static Service ForSpawned(TempMachine work, string machine, string socketName = "s.socket")
        {
            string wl = Path.Combine(work.Dir, "w.json");
            File.WriteAllText(wl, Workload);
            Assert.Equal(0, CliRunner.RunProcess(work.Dir, "spawn", wl, "--machine", machine).Code);
            return Start(Path.Combine(work.Dir, socketName), machine);
        }

        /// <summary>SIGTERM, as a service manager stops it; returns the exit status.</summary>
        public int Stop()
        {
            using (var kill = Process.Start("kill", ["-TERM", _p.Id.ToString()]))
                kill.WaitForExit();
            if (!_p.WaitForExit(60_000))
                throw new TimeoutException("the service did not stop within 60 s of SIGTERM");
            return _p.ExitCode;
        }

        public void Dispose()
        {
            if (!_p.HasExited)
                _p.Kill(true);
            _p.Dispose();
        }
    }

    /// <summary>A SOCK_SEQPACKET client: one message per packet, as pycriu and libcriu send them.</summary>
    private sealed class Client : IDisposable
    {
        private readonly Socket _s = new(AddressFamily.Unix, SocketType.Seqpacket, ProtocolType.Unspecified);

        public Client(string address)
        {
            _s.Connect(new UnixDomainSocketEndPoint(address));
            _s.ReceiveTimeout = 120_000;
        }

        public void Send(criu_req req) => SendRaw(req.ToByteArray());
        public void SendRaw(byte[] packet) => _s.Send(packet);

        /// <summary>The next response, or null at end of file.</summary>
        public criu_resp? Receive()
        {
            var buffer = new byte[1 << 16];
            int n;
            try
            {
                n = _s.Receive(buffer);
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
            {
                return null;
            }
            return n == 0 ? null : criu_resp.Parser.ParseFrom(buffer, 0, n);
        }

        public void Dispose() => _s.Dispose();
    }
}

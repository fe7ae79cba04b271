using System.Diagnostics;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// Real CRIU clients against the built criu-sharp: Debian's pycriu (python3-pycriu, from the criu
/// package; /usr/bin/python3 has it) starting <c>criu-sharp swrk FD</c> exactly as it starts CRIU,
/// and samples/phaul.py, P.Haul's loop written against pycriu.
/// </summary>
public class RpcClientTests
{
    private const string Python = "/usr/bin/python3";

    // 4 MiB with every write on 1 % of the pages: pre-dumps after the first are tiny.
    private const string Workload = """
        { "seed": 3, "processes": [ { "name": "hot",
            "mappings": [ { "name": "heap", "size": "4MiB" } ],
            "behaviour": { "type": "hotcold", "mapping": "heap", "distribution": "hot", "hot_fraction": 0.01, "hot_share": 1.0, "pages_per_second": 5000, "prefill": true } } ] }
        """;

    /// <summary>pycriu's own calls (check, pre_dump, dump, restore) plus the requests it has no method for.</summary>
    private const string Session = """
        import os, sys
        import pycriu
        from pycriu import rpc_pb2 as rpc
        binary, work = sys.argv[1], sys.argv[2]
        c = pycriu.criu()
        c.use_binary(binary)
        os.environ['CRIU_SHARP_MACHINE'] = work + '/source'

        c.check()
        print('check ok')
        req = rpc.criu_req(); req.type = rpc.VERSION
        r = c._send_req_and_recv_resp(req)
        print('version', r.success, r.version.major_number, r.version.minor_number, r.version.name)
        req = rpc.criu_req(); req.type = rpc.FEATURE_CHECK
        req.features.mem_track = True; req.features.lazy_pages = True
        r = c._send_req_and_recv_resp(req)
        print('features', r.success, r.type == rpc.FEATURE_CHECK, r.features.mem_track, r.features.lazy_pages)

        def opts(d, parent=None, pid=1000):
            o = rpc.criu_opts()
            o.images_dir_fd = os.open(d, os.O_DIRECTORY)
            if pid: o.pid = pid
            if parent: o.parent_img = parent
            o.log_file = 'rpc.log'
            return o

        for i in (1, 2, 3):
            d = work + '/img/%d' % i; os.makedirs(d)
            c.opts = opts(d, '../%d' % (i - 1) if i > 1 else None)
            c.pre_dump()
            st = pycriu.images.load(open(d + '/stats-dump', 'rb'))['entries'][0]['dump']
            print('pre-dump', i, st['pages_written'], st['pages_skipped_parent'])
        d = work + '/img/4'; os.makedirs(d)
        c.opts = opts(d, '../3')
        print('dump restored', c.dump().restored)
        os.environ['CRIU_SHARP_MACHINE'] = work + '/dest'
        c.opts = opts(d, pid=None)
        print('restore pid', c.restore().pid)

        c.opts = opts(work + '/img', pid=4242)
        try:
            c.dump()
        except pycriu.CRIUExceptionExternal as e:
            print('no such pid', e.errno, e.typ == rpc.DUMP)

        # The same through `criu-sharp service`: the descriptor is found through /proc/<client>/fd.
        import subprocess
        sock = work + '/criu_service.socket'
        svc = subprocess.Popen([binary, 'service', '--address', sock, '--machine', work + '/dest'], stdout=subprocess.PIPE, text=True)
        print('service', 'listening on' in svc.stdout.readline())
        s = pycriu.criu()
        s.use_sk(sock)
        d = work + '/img/5'; os.makedirs(d)
        s.opts = opts(d)
        s.pre_dump()
        st = pycriu.images.load(open(d + '/stats-dump', 'rb'))['entries'][0]['dump']
        print('service pre-dump', st['pages_written'] > 0)
        svc.terminate()
        print('service exit', svc.wait())
        """;

    [Fact]
    public void Pycriu_ChecksPreDumpsThreeTimesDumpsAndRestoresIntoAnotherMachine()
    {
        using var work = new TempMachine();
        Directory.CreateDirectory(Path.Combine(work.Dir, "img"));
        string wl = Path.Combine(work.Dir, "hot.json");
        File.WriteAllText(wl, Workload);
        string source = Path.Combine(work.Dir, "source"), dest = Path.Combine(work.Dir, "dest");
        Assert.Equal(0, CliRunner.RunProcess(work.Dir, "spawn", wl, "--machine", source).Code);
        Assert.Equal(0, CliRunner.RunProcess(work.Dir, "run", "--for", "50ms", "--machine", source).Code);
        string script = Path.Combine(work.Dir, "session.py");
        File.WriteAllText(script, Session);

        var (code, output) = RunPython(work.Dir, script, Apphost(), work.Dir);
        Assert.True(code == 0, output);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains("check ok", lines);
        Assert.Contains($"version True {Rpc.RpcCommands.CriuMajor} {Rpc.RpcCommands.CriuMinor} criu-sharp 1.0.0", lines);
        Assert.Contains("features True True True False", lines);
        // The first pre-dump writes the whole heap; the next ones only the hot pages, the rest in parent.
        var pre = lines.Where(l => l.StartsWith("pre-dump ", StringComparison.Ordinal)).Select(l => l.Split(' ')).ToList();
        Assert.Equal(3, pre.Count);
        Assert.True(long.Parse(pre[0][2]) >= 1024, output);
        Assert.Equal("0", pre[0][3]);
        for (int i = 1; i < 3; i++)
        {
            Assert.True(long.Parse(pre[i][2]) < 64, output);
            Assert.True(long.Parse(pre[i][3]) > 900, output);
        }
        Assert.Contains("dump restored False", lines);
        Assert.Contains("restore pid 1000", lines);
        Assert.Contains("no such pid 3 True", lines);
        Assert.Contains("service True", lines);
        Assert.Contains("service pre-dump True", lines);
        Assert.Contains("service exit 0", lines);
        Assert.True(File.Exists(Path.Combine(work.Dir, "img", "5", "pagemap-1000.img")));

        Assert.Equal("../3", new FileInfo(Path.Combine(work.Dir, "img", "4", "parent")).LinkTarget);
        Assert.Contains("Dumping finished successfully", File.ReadAllText(Path.Combine(work.Dir, "img", "2", "rpc.log")));
        // The source tree was killed by the dump; the destination holds it and it checks itself.
        Assert.DoesNotContain("1000", CliRunner.RunProcess(work.Dir, "ps", "--machine", source).Out);
        var verify = CliRunner.RunProcess(work.Dir, "verify", "--machine", dest);
        Assert.True(verify.Code == 0, verify.Out + verify.Err);
        Assert.Contains("1000 hotcold: ok", verify.Out);
    }

    [Fact]
    public void PhaulSample_MigratesBetweenMachinesOverRpc()
    {
        using var work = new TempMachine();
        Directory.CreateDirectory(work.Dir);
        string wl = Path.Combine(work.Dir, "hot.json");
        File.WriteAllText(wl, Workload);
        var (code, output) = RunPython(CliRunner.RepoRoot(), Path.Combine(CliRunner.RepoRoot(), "samples", "phaul.py"),
            wl, Path.Combine(work.Dir, "work"), Apphost());
        Assert.True(code == 0, output);
        Assert.Contains("pre-dump 1: ", output);
        Assert.Matches(@"stop: small dump \(\d+ <= 64 pages\)", output);
        Assert.Contains("(notified: pre-dump, post-dump)", output);
        Assert.Contains("destination: restored 1000 (notified: pre-restore, post-restore, pre-resume, post-resume)", output);
        Assert.Equal(2, output.Split('\n').Count(l => l.StartsWith("1000 hotcold: ok", StringComparison.Ordinal)));
        Assert.Contains("migrated: ", output);
    }

    /// <summary>pycriu against a real process of this host, the service's machine being /proc.</summary>
    private const string RealHostSession = """
        import os, sys
        import pycriu
        from pycriu import rpc_pb2 as rpc
        binary, work, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
        c = pycriu.criu()
        c.use_binary(binary)
        os.environ['CRIU_SHARP_MACHINE'] = '/proc'
        c.check()
        print('check ok')
        req = rpc.criu_req(); req.type = rpc.FEATURE_CHECK; req.features.mem_track = True
        r = c._send_req_and_recv_resp(req)
        print('features', r.success, r.features.mem_track)

        def opts(d, parent=None):
            o = rpc.criu_opts()
            o.images_dir_fd = os.open(d, os.O_DIRECTORY)
            o.pid = pid
            if parent: o.parent_img = parent
            return o

        for i in (1, 2):
            d = work + '/img/%d' % i; os.makedirs(d)
            c.opts = opts(d, '../1' if i == 2 else None)
            c.pre_dump()
            st = pycriu.images.load(open(d + '/stats-dump', 'rb'))['entries'][0]['dump']
            print('pre-dump', i, st['pages_written'], st['pages_skipped_parent'])
        d = work + '/img/3'; os.makedirs(d)
        c.opts = opts(d, '../2')
        print('dump restored', c.dump().restored)
        c.opts = opts(d)
        try:
            c.restore()
            print('restore into /proc succeeded')
        except Exception as e:
            print('restore refused', e.errno)
        """;

    [Fact]
    public void Pycriu_OnTheRealHost_PreDumpsAndDumpsARunningProcess_AndNeverRestoresIntoIt()
    {
        using var work = new TempMachine();
        Directory.CreateDirectory(Path.Combine(work.Dir, "img"));
        using var sleeper = Process.Start(new ProcessStartInfo("sleep", "120"))!;
        try
        {
            string script = Path.Combine(work.Dir, "real.py");
            File.WriteAllText(script, RealHostSession);
            var (code, output) = RunPython(work.Dir, script, Apphost(), work.Dir, sleeper.Id.ToString(System.Globalization.CultureInfo.InvariantCulture));
            Assert.True(code == 0, output);
            var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Contains("check ok", lines);
            Assert.Contains("features True True", lines); // the content tracker works on every kernel
            var pre = lines.Where(l => l.StartsWith("pre-dump ", StringComparison.Ordinal)).Select(l => l.Split(' ')).ToList();
            Assert.Equal(2, pre.Count);
            Assert.True(long.Parse(pre[0][2], System.Globalization.CultureInfo.InvariantCulture) > 0, output);
            // sleep changes almost nothing between two pre-dumps: most of it is left in the parent.
            Assert.True(long.Parse(pre[1][3], System.Globalization.CultureInfo.InvariantCulture) > long.Parse(pre[1][2], System.Globalization.CultureInfo.InvariantCulture), output);
            Assert.Contains("dump restored False", lines);
            Assert.Contains("restore refused 95", lines); // EOPNOTSUPP
            Assert.True(File.Exists(Path.Combine(work.Dir, "img", "3", $"pagemap-{sleeper.Id}.img")), output);
            Assert.False(File.Exists(Path.Combine(work.Dir, "img", "3", ImageFormat.ImageNames.IncompleteMarker)));
            // The real process was never killed.
            Assert.False(sleeper.HasExited, output);
        }
        finally
        {
            sleeper.Kill();
            sleeper.WaitForExit();
        }
    }

    /// <summary>The criu-sharp apphost next to the tests: directly executable, as pycriu needs.</summary>
    internal static string Apphost()
    {
        string path = Path.Combine(AppContext.BaseDirectory, "criu-sharp");
        Assert.True(File.Exists(path), $"{path} is missing: the CLI's apphost is not copied next to the tests");
        return path;
    }

    private static (int Code, string Output) RunPython(string workDir, string script, params string[] args)
    {
        Assert.True(File.Exists(Python), "/usr/bin/python3 is missing (Debian's python3 with python3-pycriu)");
        var psi = new ProcessStartInfo(Python) { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(script);
        foreach (var a in args)
            psi.ArgumentList.Add(a);
        psi.Environment.Remove("CRIU_SHARP_MACHINE");
        psi.Environment["WARMUP"] = "50ms";
        using var p = Process.Start(psi)!;
        var err = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(180_000))
        {
            p.Kill(true);
            throw new TimeoutException($"{script} did not finish in 180 s");
        }
        return (p.ExitCode, stdout + err.GetAwaiter().GetResult());
    }
}

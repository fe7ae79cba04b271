using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Xunit;

namespace CriuSharp.Cli.Tests;

/// <summary>
/// migrate --transport tcp: the destination is a separate criu-sharp process (migrate-service) on
/// loopback, pages go through its page server, and the figures are measured. Ports are ephemeral.
/// </summary>
public class MigrateTcpTests : IClassFixture<MigrateScratch>
{
    private readonly MigrateScratch _s;
    public MigrateTcpTests(MigrateScratch s) => _s = s;

    private static JsonElement Migrate(string[] args, out CliRunner.Result r)
    {
        r = CliRunner.Run(["migrate", .. args, "--json"]);
        Assert.True(r.Code == 0, r.Err + r.Out);
        return JsonDocument.Parse(r.Out).RootElement;
    }

    /// <summary>
    /// --delta over TCP: the source asks the destination's page servers for the delta extension
    /// (PS_IOV_FEATURES) and sends re-dirtied pages as PS_IOV_ADD_DELTA where they pay, on the
    /// hotcold sample with real page contents. How many pay depends on the iterations' lengths,
    /// which follow measured transfer times here, so the byte comparison with and without deltas
    /// is in PageServerDeltaTests (simulated, deterministic); this checks the wire's accounting.
    /// </summary>
    [Fact]
    public void Delta_OverTcp_GoesThroughThePageServers_AndVerifies()
    {
        string dest = Path.Combine(_s.Dir, "dest-delta-" + Guid.NewGuid().ToString("N"));
        var root = Migrate(["--workload", Path.Combine(CliRunner.RepoRoot(), "samples", "hotcold-trace.json"),
            "--transport", "tcp", "--policy", "fixed:3", "--delta", "--dest-dir", dest], out _);
        Assert.True(root.GetProperty("verification").GetProperty("ok").GetBoolean());
        var its = root.GetProperty("iterations").EnumerateArray().ToList();
        ulong hits = 0, deltaPages = 0;
        foreach (var i in its)
        {
            var d = i.GetProperty("stats").GetProperty("delta");
            hits += d.GetProperty("cache_hits").GetUInt64();
            ulong pages = d.GetProperty("pages_delta").GetUInt64(), bytes = d.GetProperty("delta_bytes").GetUInt64();
            deltaPages += pages;
            long onWire = i.GetProperty("page_bytes_on_wire").GetInt64(), stored = i.GetProperty("bytes_compressed").GetInt64();
            // Whole pages as compressed blocks, then each ADD_DELTA: encoding word, 12-byte records, the deltas.
            Assert.True(onWire >= stored + (long)bytes + 12 * (long)pages, $"{onWire} B on the wire, {stored} B of blocks, {bytes} B of {pages} deltas");
            if (pages > 0)
                Assert.True(onWire - stored < (long)pages * 4096, "delta pages cost less on the wire than whole pages");
            else
                Assert.Equal(stored, onWire);
        }
        // Deltas were tried in the pre-dumps that followed the first (the page servers took them).
        Assert.True(hits > 0);
        string images = Path.Combine(dest, "images");
        Assert.Equal(deltaPages > 0, Directory.GetFiles(images, "deltas-*.img", SearchOption.AllDirectories).Length > 0);
    }

    [Fact]
    public void Precopy_OverTcp_VerifiesAndMeasuresWhatCrossedTheSockets()
    {
        string dest = Path.Combine(_s.Dir, "dest-precopy-" + Guid.NewGuid().ToString("N"));
        var root = Migrate(_s.Args("--transport", "tcp", "--policy", "fixed:2", "--preload", "--dest-dir", dest), out var run);
        // The source's warm-up ran: a failed one would be a warning (and the downtime would count the JIT).
        Assert.DoesNotContain("warm-up failed", run.Err + run.Out);
        Assert.Equal("tcp", root.GetProperty("transport").GetString());
        Assert.True(root.GetProperty("verification").GetProperty("ok").GetBoolean());
        var its = root.GetProperty("iterations").EnumerateArray().ToList();
        Assert.Equal(3, its.Count);
        foreach (var i in its)
        {
            // The page server received exactly what the dump says it stored (compressed blocks on the wire).
            long onWire = i.GetProperty("page_bytes_on_wire").GetInt64();
            Assert.True(onWire > 0);
            Assert.Equal(i.GetProperty("bytes_compressed").GetInt64(), onWire);
            Assert.True(i.GetProperty("bytes_sent").GetInt64() > onWire, "the other images cross too");
            Assert.True(i.GetProperty("transfer_ns").GetInt64() > 0);
        }
        var d = root.GetProperty("summary").GetProperty("downtime");
        foreach (var part in new[] { "frozen_ns", "transfer_ns", "restore_ns" })
            Assert.True(d.GetProperty(part).GetInt64() > 0, part);
        Assert.Equal(d.GetProperty("frozen_ns").GetInt64() + d.GetProperty("transfer_ns").GetInt64() + d.GetProperty("restore_ns").GetInt64(),
            root.GetProperty("summary").GetProperty("downtime_ns").GetInt64());
        // The destination kept its images (complete, parent-linked) and the restored machine.
        string images = Path.Combine(dest, "images");
        Assert.False(File.Exists(Path.Combine(images, ".criu-sharp-incomplete")));
        Assert.Equal("../2", new FileInfo(Path.Combine(images, "3", "parent")).LinkTarget);
        var verify = CliRunner.Run("verify", "--machine", Path.Combine(dest, "machine"));
        Assert.True(verify.Code == 0, verify.Out + verify.Err);
        // Byte-exact: restoring the received chain again in this process verifies every VMA checksum.
        var again = CliRunner.Run("restore", "-D", Path.Combine(images, "3"), "--machine", Path.Combine(_s.Dir, "again-" + Guid.NewGuid().ToString("N")));
        Assert.True(again.Code == 0, again.Err);
    }

    [Theory]
    [InlineData("hybrid")]
    [InlineData("postcopy")]
    public void LazyModes_OverTcp_FetchEveryPageAndVerify(string mode)
    {
        var root = Migrate(_s.Args("--transport", "tcp", "--mode", mode, "--policy", "fixed:1"), out var run);
        Assert.DoesNotContain("warm-up failed", run.Err + run.Out);
        Assert.True(root.GetProperty("verification").GetProperty("ok").GetBoolean());
        var pc = root.GetProperty("post_copy");
        Assert.True(pc.GetProperty("measured").GetBoolean());
        long lazy = pc.GetProperty("lazy_pages").GetInt64();
        Assert.True(lazy > 0);
        // Every lazy page arrived, by a fault or by the drain.
        Assert.Equal(lazy, pc.GetProperty("pages_by_fault").GetInt64() + pc.GetProperty("pages_by_drain").GetInt64());
        Assert.Equal(0, pc.GetProperty("pages_lost").GetInt64());
        Assert.True(pc.GetProperty("last_page_ns").GetInt64() > 0);
        if (pc.GetProperty("pages_by_fault").GetInt64() > 0)
            Assert.True(pc.GetProperty("fault_latency_p99_ns").GetInt64() >= pc.GetProperty("fault_latency_p50_ns").GetInt64());
        var its = root.GetProperty("iterations").EnumerateArray().ToList();
        Assert.Equal(mode == "hybrid" ? 2 : 1, its.Count);
        if (mode == "hybrid")
        {
            // The lazy final dump took its parent from the pagemaps the destination sent back: only
            // what the pre-dump did not already carry stays lazy.
            Assert.True(its[^1].GetProperty("pages_skipped_parent").GetInt64() > 0);
            Assert.DoesNotContain(root.GetProperty("warnings").EnumerateArray(), w => w.GetString()!.Contains("ignored", StringComparison.Ordinal));
        }
    }

    [Fact]
    public void Churn_PostCopy_OverTcp_FollowsTheTasksMemoryChanges_AndVerifies()
    {
        // samples/churn.json unmaps, mremaps and discards lazy memory while it arrives over the page server.
        string churn = Path.Combine(CliRunner.RepoRoot(), "samples", "churn.json");
        var root = Migrate(["--workload", churn, "--warmup", "300ms", "--run-after", "20ms", "--transport", "tcp", "--mode", "postcopy"], out var r);
        Assert.True(root.GetProperty("verification").GetProperty("ok").GetBoolean(), r.Out);
        var pc = root.GetProperty("post_copy");
        Assert.True(pc.GetProperty("uffd_events").GetInt64() > 0);
        Assert.Equal(pc.GetProperty("lazy_pages").GetInt64(),
            pc.GetProperty("pages_by_fault").GetInt64() + pc.GetProperty("pages_by_drain").GetInt64() + pc.GetProperty("pages_dropped").GetInt64());
        Assert.Equal(0, pc.GetProperty("pages_lost").GetInt64());
    }

    private static (Process Proc, int Port) StartService(string images, string machine, string? crashAt)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "criu-sharp.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { dll, "migrate-service", "-D", images, "--machine", machine, "--address", "127.0.0.1", "--port", "0", "--ps-timeout", "30" })
            psi.ArgumentList.Add(a);
        psi.Environment.Remove("CRIU_SHARP_MACHINE");
        if (crashAt is not null)
            psi.Environment["CRIU_SHARP_CRASH_AT"] = crashAt;
        var p = Process.Start(psi)!;
        var line = p.StandardOutput.ReadLineAsync();
        if (!line.Wait(60_000) || line.Result is not { } l || !l.StartsWith("listening on 127.0.0.1:", StringComparison.Ordinal))
        {
            p.Kill(true);
            throw new InvalidOperationException("migrate-service did not report its port");
        }
        return (p, int.Parse(l[(l.LastIndexOf(':') + 1)..], CultureInfo.InvariantCulture));
    }

    [Fact]
    public void DestinationKilledMidRun_OneLineExit7_SourceRunsOn_DestinationMarkedIncomplete()
    {
        string images = Path.Combine(_s.Dir, "killed-" + Guid.NewGuid().ToString("N"));
        // SIGKILL at the service's 10th crash point: inside the first page-server session.
        var (svc, port) = StartService(images, images + "-machine", crashAt: "10");
        try
        {
            var r = CliRunner.Run(["migrate", .. _s.Args("--transport", "tcp", "--address", "127.0.0.1", "--port", port.ToString(CultureInfo.InvariantCulture), "--policy", "fixed:2")]);
            Assert.Equal(7, r.Code);
            Assert.StartsWith("criu-sharp: ", r.ErrLines[0]);
            Assert.Contains("keeps running on the source (self-check ok", r.ErrLines[0]);
            Assert.DoesNotContain("   at ", r.Err);
            Assert.True(svc.WaitForExit(30_000));
            Assert.Equal(137, svc.ExitCode);
            Assert.True(File.Exists(Path.Combine(images, ".criu-sharp-incomplete")));
        }
        finally
        {
            if (!svc.HasExited)
                svc.Kill(true);
            svc.Dispose();
        }
        // A rerun on the same directories succeeds: the service clears what the killed one left.
        var (again, port2) = StartService(images, images + "-machine", crashAt: null);
        try
        {
            var r = CliRunner.Run(["migrate", .. _s.Args("--transport", "tcp", "--address", "127.0.0.1", "--port", port2.ToString(CultureInfo.InvariantCulture), "--policy", "fixed:2")]);
            Assert.True(r.Code == 0, r.Err);
            Assert.True(again.WaitForExit(30_000));
            Assert.Equal(0, again.ExitCode);
            Assert.False(File.Exists(Path.Combine(images, ".criu-sharp-incomplete")));
        }
        finally
        {
            if (!again.HasExited)
                again.Kill(true);
            again.Dispose();
        }
    }

    [Fact]
    public void SameDestDirTwice_TheSecondRunReplacesTheFirst()
    {
        string dest = Path.Combine(_s.Dir, "dest-twice-" + Guid.NewGuid().ToString("N"));
        for (int i = 0; i < 2; i++)
        {
            var r = CliRunner.Run(["migrate", .. _s.Args("--transport", "tcp", "--policy", "fixed:1", "--dest-dir", dest)]);
            Assert.True(r.Code == 0, r.Err);
        }
        Directory.CreateDirectory(Path.Combine(dest, "mine"));
        var refused = CliRunner.Run(["migrate", .. _s.Args("--transport", "tcp", "--policy", "fixed:1", "--dest-dir", dest)]);
        Assert.Equal(3, refused.Code);
        Assert.True(Directory.Exists(Path.Combine(dest, "images", "2")), "a directory that is not ours is left alone");
    }

    [Fact]
    public void ConnectionRefused_OneLineExit7()
    {
        // A port that was free a moment ago and has no listener now.
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        var r = CliRunner.Run(["migrate", .. _s.Args("--transport", "tcp", "--address", "127.0.0.1", "--port", port.ToString(CultureInfo.InvariantCulture))]);
        Assert.Equal(7, r.Code);
        Assert.StartsWith("criu-sharp: cannot connect to the destination at 127.0.0.1:", r.ErrLines[0]);
    }

    [Theory]
    [InlineData("--address", "127.0.0.1")]
    [InlineData("--dest-dir", "x")]
    [InlineData("--transport", "tcp", "--port", "5000")]
    [InlineData("--transport", "tcp", "--address", "127.0.0.1", "--port", "0")]
    public void TcpOptionsOutOfPlace_AreUsageErrors(params string[] extra)
    {
        var r = CliRunner.Run(["migrate", .. _s.Args(extra)]);
        Assert.Equal(2, r.Code);
        Assert.StartsWith("criu-sharp: ", r.ErrLines[0]);
    }
}

using CriuSharp.SimKernel;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Workloads;
using Xunit;
using static CriuSharp.SimKernel.Tests.WorkloadHarness;

namespace CriuSharp.SimKernel.Tests;

public class WorkloadTests
{
    public static readonly TheoryData<string> Samples = new()
    {
        "uniform.json", "hotcold.json", "sequential.json", "kvstore.json", "churn.json",
        "fork.json", "swap.json", "thp.json", "idle.json", "threads.json",
    };

    // 40 ms of virtual time: a few thousand operations per sample at the sample rates.
    private const ulong RunNs = 40_000_000;
    private const ulong Quantum = 1_000_000;

    private static void AssertAllVerify(Kernel k)
    {
        foreach (var t in k.Tasks.Where(WorkloadApi.HasProgram))
        {
            var r = WorkloadApi.Verify(t);
            Assert.True(r.Ok, $"pid {t.Pid} ({r.Behaviour}): {r.Detail}");
        }
    }

    [Theory]
    [MemberData(nameof(Samples))]
    public void Sample_runs_and_verifies(string sample)
    {
        var k = NewKernel();
        var tasks = WorkloadApi.Spawn(k, Sample(sample));
        Assert.NotEmpty(tasks);
        AssertAllVerify(k);
        RunTime(k, RunNs, Quantum);
        foreach (var t in k.Tasks)
            Assert.True(t.Alive, $"{sample}: pid {t.Pid} died (signal {t.TermSignal} at 0x{t.FaultAddress:x})");
        var prog = WorkloadApi.Program(tasks[0]);
        ulong expected = WorkloadApi.DueBy(prog.Rate, RunNs);
        Assert.Equal(expected, tasks[0].Registers[Regs.Pc]);
        AssertAllVerify(k);
    }

    [Theory]
    [MemberData(nameof(Samples))]
    public void Same_seed_same_memory_and_slicing_does_not_matter(string sample)
    {
        var a = NewKernel();
        WorkloadApi.Spawn(a, Sample(sample));
        RunTime(a, RunNs, Quantum);

        var b = NewKernel();
        WorkloadApi.Spawn(b, Sample(sample));
        // Odd quanta that do not divide the run, plus a part in one go.
        RunTime(b, 7_300_001, 333_333);
        RunTime(b, RunNs - 7_300_001, 5_000_000);

        Assert.Equal(a.Tasks.Count(), b.Tasks.Count());
        Assert.Equal(Hash(a), Hash(b));
    }

    [Theory]
    [MemberData(nameof(Samples))]
    public void Dump_restore_midway_gives_byte_identical_memory(string sample)
    {
        var straight = NewKernel();
        WorkloadApi.Spawn(straight, Sample(sample));
        RunTime(straight, RunNs, Quantum);

        var first = NewKernel();
        WorkloadApi.Spawn(first, Sample(sample));
        RunTime(first, RunNs / 3, Quantum);
        var restored = DumpRestore(first);
        AssertAllVerify(restored);
        RunTime(restored, RunNs - RunNs / 3, Quantum);

        Assert.Equal(Hash(straight), Hash(restored));
        AssertAllVerify(restored);
    }

    [Fact]
    public void Steps_straight_equal_steps_split_by_a_dump()
    {
        var straight = NewKernel();
        var s = WorkloadApi.Spawn(straight, Sample("kvstore.json"))[0];
        Assert.Equal(5000, WorkloadApi.RunSteps(s, 5000));

        var first = NewKernel();
        WorkloadApi.RunSteps(WorkloadApi.Spawn(first, Sample("kvstore.json"))[0], 1234);
        var restored = DumpRestore(first);
        Assert.Equal(5000 - 1234, WorkloadApi.RunSteps(restored.Tasks.Single(WorkloadApi.HasProgram), 5000 - 1234));
        Assert.Equal(Hash(straight), Hash(restored));
    }

    [Fact]
    public void Different_seeds_give_different_memory()
    {
        var a = NewKernel();
        WorkloadApi.Spawn(a, Sample("uniform.json"));
        RunTime(a, 5_000_000, Quantum);
        string path = Path.Combine(Path.GetTempPath(), $"wl-seed-{Environment.ProcessId}.json");
        File.WriteAllText(path, File.ReadAllText(Sample("uniform.json")).Replace("\"seed\": 1", "\"seed\": 99"));
        try
        {
            var b = NewKernel();
            WorkloadApi.Spawn(b, path);
            RunTime(b, 5_000_000, Quantum);
            Assert.NotEqual(Hash(a), Hash(b));
        }
        finally
        {
            File.Delete(path);
        }
    }

    public static readonly TheoryData<string> CheckedSamples = new()
    {
        "uniform.json", "hotcold.json", "sequential.json", "kvstore.json", "churn.json",
        "fork.json", "swap.json", "thp.json", "idle.json", "threads.json",
    };

    [Theory]
    [MemberData(nameof(CheckedSamples))]
    public void A_single_corrupted_byte_is_found_at_its_page(string sample)
    {
        var k = NewKernel();
        WorkloadApi.Spawn(k, Sample(sample));
        RunTime(k, 20_000_000, Quantum);
        var rnd = new Random(sample.GetHashCode(StringComparison.Ordinal) & 0x7fff);
        ulong ps = (ulong)k.Arch.PageSize;
        foreach (var t in k.Tasks.Where(WorkloadApi.HasProgram).ToList())
        {
            var prog = WorkloadApi.Program(t);
            // Candidate addresses: every mapped page of the workload's regions (churn's arena is twice its size).
            var pages = new List<ulong>();
            foreach (var (name, b, len) in Regions(t))
            {
                bool arena = prog.Kind == Behaviour.Churn && name == prog.Regions[prog.Data].Name;
                ulong span = arena ? 2 * len : len;
                bool sharedOthers = prog.SharedData >= 0 && name == prog.Regions[prog.SharedData].Name;
                for (ulong va = b; va < b + span; va += ps)
                {
                    if (t.Mm.Find(va) is not { } v || !v.CanRead)
                        continue;
                    if (sharedOthers)
                    {
                        // Another process owns the other slices of shared memory and checks them.
                        ulong slice = len / ps / (ulong)(prog.Children + 1);
                        ulong q = (va - b) / ps;
                        ulong role = t.Registers[Regs.Role];
                        if (q < role * slice || q >= (role + 1) * slice)
                            continue;
                    }
                    if (prog.Kind == Behaviour.Threads && t.IsThread && name == prog.Regions[prog.Data].Name)
                    {
                        // A thread checks its own slice; the leader checks them all.
                        var (lo, hi) = Stamped.ThreadSlice(prog, len / ps, t.Registers[Regs.Role]);
                        ulong q = (va - b) / ps;
                        if (q < lo || q >= hi)
                            continue;
                    }
                    pages.Add(va);
                }
            }
            for (int trial = 0; trial < 4; trial++)
            {
                ulong page = pages[rnd.Next(pages.Count)];
                ulong at = page + (ulong)rnd.Next((int)ps);
                var old = new byte[1];
                k.Proc.ReadMemory(t.Pid, at, old).OrThrow("read");
                byte bad = (byte)(old[0] ^ (1 << rnd.Next(8)));
                k.Proc.WriteMemory(t.Pid, at, [bad]).OrThrow("corrupt");
                var r = WorkloadApi.Verify(t);
                Assert.False(r.Ok, $"{sample}: corruption at 0x{at:x} went unnoticed");
                Assert.True(page == r.FirstBadAddress, $"{sample}: corrupted 0x{at:x}, reported 0x{r.FirstBadAddress:x}: {r.Detail}");
                k.Proc.WriteMemory(t.Pid, at, old).OrThrow("repair");
                Assert.True(WorkloadApi.Verify(t).Ok);
            }
        }
    }

    [Fact]
    public void Threads_write_concurrently_and_a_stale_or_missing_thread_is_caught()
    {
        var k = NewKernel();
        var leader = WorkloadApi.Spawn(k, Sample("threads.json"))[0];
        var threads = k.Threads(leader.Pid);
        Assert.Equal(4, threads.Count);
        RunTime(k, 5_000_000, Quantum);
        // Every thread ran its own due operations in the same 5 ms of virtual time.
        ulong due = WorkloadApi.DueBy(WorkloadApi.Program(leader).Rate, 5_000_000);
        Assert.All(threads, t => Assert.Equal(due, t.Registers[Regs.Pc]));
        Assert.True(WorkloadApi.Verify(leader).Ok);
        var second = threads[2];
        second.Registers[Regs.Digest]--;
        var r = WorkloadApi.Verify(leader);
        Assert.False(r.Ok);
        Assert.Contains($"thread {second.Pid} (thread 2)", r.Detail);
        Assert.False(WorkloadApi.Verify(second).Ok);
        second.Registers[Regs.Digest]++;
        k.ExitThread(threads[3]);
        r = WorkloadApi.Verify(leader);
        Assert.False(r.Ok);
        Assert.Contains("thread 3 of the program is missing", r.Detail);
    }

    [Fact]
    public void A_stale_data_page_and_its_stale_ledger_page_are_caught_by_the_register_digest()
    {
        var k = NewKernel();
        var t = WorkloadApi.Spawn(k, Sample("idle.json"))[0];
        var prog = WorkloadApi.Program(t);
        ulong ps = (ulong)k.Arch.PageSize;
        ulong data = t.Registers[Regs.RegionBase + prog.Data];
        ulong ledger = t.Registers[Regs.RegionBase + prog.Ledger];
        var oldData = new byte[ps];
        var oldLedger = new byte[ps];
        k.Proc.ReadMemory(t.Pid, data, oldData).OrThrow("r");
        k.Proc.ReadMemory(t.Pid, ledger, oldLedger).OrThrow("r");
        // Idle does not write; rewrite page 0 as the program would (a newer stamp), then put both old pages back.
        var cpuWrite = new byte[8];
        ulong s = t.Registers[Regs.Stamp] + 1;
        BitConverter.TryWriteBytes(cpuWrite, Stamped.DataWord(prog.Seed, 0, s));
        k.Proc.WriteMemory(t.Pid, data + Stamped.Offset(0, k.Arch.PageShift - 3), cpuWrite).OrThrow("w");
        ulong oldLw = BitConverter.ToUInt64(oldLedger, 0);
        ulong newLw = Stamped.LedgerWord(prog.Seed, 0, s);
        BitConverter.TryWriteBytes(cpuWrite, newLw);
        k.Proc.WriteMemory(t.Pid, ledger, cpuWrite).OrThrow("w");
        t.Registers[Regs.Stamp] = s;
        t.Registers[Regs.Digest] += newLw - oldLw;
        Assert.True(WorkloadApi.Verify(t).Ok);

        k.Proc.WriteMemory(t.Pid, data, oldData).OrThrow("w");
        k.Proc.WriteMemory(t.Pid, ledger, oldLedger).OrThrow("w");
        var r = WorkloadApi.Verify(t);
        Assert.False(r.Ok);
        Assert.Contains("another point in time", r.Detail);
    }

    [Fact]
    public void Fork_children_share_cow_and_shared_memory()
    {
        var k = NewKernel();
        var parent = WorkloadApi.Spawn(k, Sample("fork.json"))[0];
        RunTime(k, 10_000_000, Quantum);
        var all = k.Tree(parent.Pid);
        Assert.Equal(3, all.Count);
        Assert.Equal([0UL, 1UL, 2UL], all.Select(t => t.Registers[Regs.Role]).Order().ToArray());
        var prog = WorkloadApi.Program(parent);
        ulong shm = parent.Registers[Regs.RegionBase + prog.SharedData];
        // The parent's slice reads the same from a child: one shmem object.
        ulong slice = prog.Regions[prog.SharedData].Size / (ulong)k.Arch.PageSize / 3;
        var a = new byte[slice * (ulong)k.Arch.PageSize];
        var b = new byte[a.Length];
        k.Proc.ReadMemory(parent.Pid, shm, a).OrThrow("r");
        k.Proc.ReadMemory(all[1].Pid, shm, b).OrThrow("r");
        Assert.Equal(a, b);
        Assert.Contains(a, x => x != 0);
        // The private copies diverged: the children wrote their own stamps.
        Assert.NotEqual(parent.Registers[Regs.Digest], all[1].Registers[Regs.Digest]);
        Assert.True(parent.Mm.WpFaults > 0 || all[1].Mm.WpFaults > 0, "copy-on-write faults expected");
        AssertAllVerify(k);
    }

    [Fact]
    public void Kvstore_inserts_updates_and_deletes()
    {
        var k = NewKernel();
        var t = WorkloadApi.Spawn(k, Sample("kvstore.json"))[0];
        WorkloadApi.RunSteps(t, 200_000);
        var prog = WorkloadApi.Program(t);
        ulong b = t.Registers[Regs.RegionBase + prog.Data];
        Assert.True(t.LoadU64(b + 16, out ulong count));
        // Inserts when absent, deletes a fifth of hits: the table settles well inside the key space.
        Assert.InRange(count, prog.Keys / 10, prog.Keys - 1);
        Assert.True(WorkloadApi.Verify(t).Ok);
    }

    [Fact]
    public void Frozen_time_is_not_caught_up_and_a_frozen_task_does_not_run()
    {
        var k = NewKernel();
        var t = WorkloadApi.Spawn(k, Sample("uniform.json"))[0];
        RunTime(k, 1_000_000, Quantum);
        ulong pc = t.Registers[Regs.Pc];
        k.Freeze(t.Pid);
        RunTime(k, 5_000_000, Quantum);
        Assert.Equal(pc, t.Registers[Regs.Pc]);
        k.Thaw(t.Pid);
        RunTime(k, 1_000_000, Quantum);
        Assert.Equal(2 * pc, t.Registers[Regs.Pc]);
    }

    [Fact]
    public void Churn_moves_remaps_and_protects()
    {
        var k = NewKernel();
        var t = WorkloadApi.Spawn(k, Sample("churn.json"))[0];
        WorkloadApi.RunSteps(t, 20_000);
        Assert.True(t.Alive);
        var vmas = t.Mm.Vmas;
        Assert.Contains(vmas, v => !v.CanWrite && v.IsAnonymous && v.SpecialName is null);
        Assert.True(WorkloadApi.Verify(t).Ok);
    }

    [Fact]
    public void Swap_pushes_pages_out_and_reads_them_back()
    {
        var k = NewKernel();
        var t = WorkloadApi.Spawn(k, Sample("swap.json"))[0];
        WorkloadApi.RunSteps(t, 20_000);
        Assert.True(t.Mm.SwapEntries > 0);
        Assert.True(t.Mm.MajorFaults > 0);
        Assert.True(WorkloadApi.Verify(t).Ok);
    }

    [Fact]
    public void Thp_maps_huge_pages()
    {
        var k = NewKernel();
        var t = WorkloadApi.Spawn(k, Sample("thp.json"))[0];
        WorkloadApi.RunSteps(t, 20_000);
        Assert.Matches(@"AnonHugePages:\s+[1-9][0-9]* kB", k.Proc.Smaps(t.Pid));
        Assert.True(WorkloadApi.Verify(t).Ok);
    }

    // ---- scenarios ---------------------------------------------------------------------

    [Theory]
    [InlineData("soft-dirty-2013.json")]
    [InlineData("unmap-map-again.json")]
    public void Scenarios_pass_on_the_modern_kernel(string scenario)
    {
        var k = NewKernel();
        var t = WorkloadApi.Spawn(k, Sample(Path.Combine("scenarios", scenario)))[0];
        long steps = WorkloadApi.Program(t).Ops.Count;
        Assert.Equal(steps, WorkloadApi.RunSteps(t, steps));
        var r = WorkloadApi.Verify(t);
        Assert.True(r.Ok, r.Detail);
    }

    [Fact]
    public void Unmap_map_again_shows_the_2013_blind_spot()
    {
        var k = NewKernel(KernelVersion.Series2013);
        var t = WorkloadApi.Spawn(k, Sample(Path.Combine("scenarios", "unmap-map-again.json")))[0];
        WorkloadApi.RunSteps(t, 100);
        var r = WorkloadApi.Verify(t);
        Assert.False(r.Ok);
        Assert.Contains("step 6 (expect_pagemap)", r.Detail);
        Assert.Contains("soft_dirty=0", r.Detail);
        Assert.Contains("pagemap2", r.Detail);
        Assert.NotNull(r.FirstBadAddress);
    }
}

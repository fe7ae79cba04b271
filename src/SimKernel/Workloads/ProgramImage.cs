using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace CriuSharp.SimKernel.Workloads;

/// <summary>Behaviour kinds a workload program can run.</summary>
public enum Behaviour { Uniform, HotCold, Sequential, KvStore, Churn, Fork, Swap, Thp, Idle, Script, Trace, Threads }

/// <summary>
/// One mapping of a program. Its address and current length live in registers
/// (<see cref="Regs.RegionBase"/>, <see cref="Regs.RegionLength"/>); this is its declaration.
/// </summary>
public sealed class RegionImage
{
    public string Name { get; set; } = "";
    public ulong Size { get; set; }
    /// <summary>PROT_* bits.</summary>
    public int Prot { get; set; }
    public bool Shared { get; set; }
    /// <summary>Backing file path in the simulated filesystem; null for anonymous memory.</summary>
    public string? Path { get; set; }
    /// <summary>0 = default, 1 = MADV_HUGEPAGE, 2 = MADV_NOHUGEPAGE.</summary>
    public int Huge { get; set; }
    /// <summary>Fixed address, or 0 to let the kernel choose.</summary>
    public ulong Address { get; set; }
    public bool Populate { get; set; }
    /// <summary>Created by a script's mmap op rather than at spawn.</summary>
    public bool Deferred { get; set; }
    public int Line { get; set; }
}

/// <summary>One operation of a <c>script</c> program (fields used depend on <see cref="Op"/>).</summary>
public sealed class ScriptOp
{
    public string Op { get; set; } = "";
    public int Line { get; set; }
    public int Region { get; set; } = -1;
    /// <summary>Byte offset into the region (page × page size + offset, resolved at spawn).</summary>
    public ulong Offset { get; set; }
    /// <summary>Length in bytes (0 = to the end of the region).</summary>
    public ulong Length { get; set; }
    public int Prot { get; set; }
    public int Advice { get; set; }
    public byte[]? Bytes { get; set; }
    public ulong NewSize { get; set; }
    /// <summary>mmap at the region's last address with MAP_FIXED.</summary>
    public bool SameAddress { get; set; }
    /// <summary>mremap target: another region's base (its index), or -1 for "kernel chooses".</summary>
    public int ToRegion { get; set; } = -1;
    public long Delta { get; set; }
    public string? ClearRefs { get; set; }
    /// <summary>expect_pagemap: the pagemap bits that are checked, and their expected values.</summary>
    public ulong ExpectMask { get; set; }
    public ulong ExpectValue { get; set; }
    /// <summary>expect_pagemap: "pagemap", "pagemap2" or null (pagemap2 where the kernel has it).</summary>
    public string? PagemapFile { get; set; }
    /// <summary>A human description of the expectation, for failure messages.</summary>
    public string? Text { get; set; }
}

/// <summary>
/// The program a workload process runs: kind and parameters, stored versioned in
/// <see cref="SimTask.ExtraState"/> ("WKL1" + compact JSON). Immutable once spawned — everything
/// that changes lives in registers and simulated memory.
/// </summary>
public sealed class ProgramImage
{
    public const int CurrentVersion = 1;
    private static readonly byte[] Magic = "WKL1"u8.ToArray();

    public int V { get; set; } = CurrentVersion;
    public Behaviour Kind { get; set; }
    public string File { get; set; } = "";
    public string Process { get; set; } = "";
    public ulong Seed { get; set; }
    /// <summary>Operations per virtual second (0: runs only with explicit steps).</summary>
    public ulong Rate { get; set; }
    public bool Prefill { get; set; }
    public List<RegionImage> Regions { get; set; } = [];
    /// <summary>Region indices: the data the behaviour works on, its ledger/control block, and fork's shared memory.</summary>
    public int Data { get; set; } = -1;
    public int Ledger { get; set; } = -1;
    public int SharedData { get; set; } = -1;

    // Parameters. Probabilities are thresholds out of 2^32 so no floating point decides a branch.
    public bool Zipf { get; set; }
    public double Exponent { get; set; }
    public ulong HotPages { get; set; }
    public uint HotShare { get; set; }
    public ulong Stride { get; set; } = 1;
    public ulong Keys { get; set; }
    public uint ReadShare { get; set; }
    public uint DeleteShare { get; set; }
    public ulong SlotPages { get; set; }
    /// <summary>churn weights: write, remap, move, mprotect, dontneed.</summary>
    public int[] Weights { get; set; } = [];
    public int Children { get; set; }
    public uint SharedShare { get; set; }
    public ulong PageoutEvery { get; set; }
    public ulong PageoutPages { get; set; }
    public ulong SplitEvery { get; set; }
    public List<ScriptOp> Ops { get; set; } = [];
    // Fields added after the first release are nullable and left out when unset, so programs
    // (and with them the core images and every published image size) stay byte-identical.
    /// <summary>trace: the recording's directory (absolute), the recorded pid replayed, time scale and looping.</summary>
    public string? TracePath { get; set; }
    public int? TracePid { get; set; }
    public double? Speed { get; set; }
    public bool? Loop { get; set; }
    /// <summary>Contents of stamped pages: null (one stamp word per page), "zero-fill:N" or "trace:PATH" (absolute).</summary>
    public string? Content { get; set; }
    /// <summary>threads: threads besides the leader (clone CLONE_THREAD at spawn); each stamps its own slice of the data.</summary>
    public int? Threads { get; set; }

    private static readonly JsonSerializerOptions Options = new()
    {
        // Defaults are written too: several properties default to -1, which omitting 0 would restore.
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new JsonStringEnumConverter() },
    };

    public byte[] Encode()
    {
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(this, Options);
        var b = new byte[Magic.Length + json.Length];
        Magic.CopyTo(b, 0);
        json.CopyTo(b, Magic.Length);
        return b;
    }

    // Decoding JSON on every quantum would cost more than the quantum's work; the decoded program
    // is cached per ExtraState array. A restored task brings a new array and decodes once.
    private static readonly ConditionalWeakTable<byte[], ProgramImage> Cache = new();

    /// <summary>Does <paramref name="state"/> hold a workload program (a task may carry other extra state)?</summary>
    public static bool Holds(byte[] state) => state.Length >= Magic.Length && state.AsSpan(0, Magic.Length).SequenceEqual(Magic);

    public static ProgramImage Decode(byte[] state)
    {
        if (Cache.TryGetValue(state, out var p))
            return p;
        if (state.Length < Magic.Length || !state.AsSpan(0, Magic.Length).SequenceEqual(Magic))
            throw new InvalidDataException("the task's extra state is not a workload program (no WKL1 header)");
        p = JsonSerializer.Deserialize<ProgramImage>(state.AsSpan(Magic.Length), Options)
            ?? throw new InvalidDataException("empty workload program");
        if (p.V != CurrentVersion)
            throw new InvalidDataException($"workload program version {p.V} is not supported (expected {CurrentVersion})");
        Cache.AddOrUpdate(state, p);
        return p;
    }

    /// <summary>The program as JSON text (for tools that show a task's core state).</summary>
    public string Describe() => Encoding.UTF8.GetString(JsonSerializer.SerializeToUtf8Bytes(this, Options));
}

/// <summary>
/// Register assignment of workload programs (32 × 64-bit, saved in the core image by a dump).
/// </summary>
public static class Regs
{
    /// <summary>Operations executed so far (the program counter of a script).</summary>
    public const int Pc = 0;
    /// <summary>xoshiro256** state, four words.</summary>
    public const int Rng = 1;
    /// <summary>0 for the spawned process, i for the i-th forked child or the i-th thread.</summary>
    public const int Role = 5;
    /// <summary>Operations made due by virtual time but not yet executed (a child inherits its parent's remainder).</summary>
    public const int Owed = 6;
    /// <summary>Virtual time up to which operations have been made due.</summary>
    public const int DueUntilNs = 7;
    /// <summary>Running sum of the ledger words: catches a ledger and its data restored together from a stale image.</summary>
    public const int Digest = 8;
    /// <summary>Non-zero once the program detected a failure (script expectation, in-flight check): 1 + the step.</summary>
    public const int Failure = 9;
    /// <summary>Detail of the failure (the pagemap entry seen, or the bad address).</summary>
    public const int FailureDetail = 10;
    /// <summary>Last stamp handed out by this process.</summary>
    public const int Stamp = 11;
    /// <summary>Children forked so far (fork) / table operations (kvstore).</summary>
    public const int Aux0 = 12;
    public const int Aux1 = 13;
    public const int Aux2 = 14;
    public const int Aux3 = 15;
    /// <summary>Region i's current base address.</summary>
    public const int RegionBase = 16;
    /// <summary>Region i's current length in bytes (0 while unmapped).</summary>
    public const int RegionLength = 24;
    public const int MaxRegions = 8;
}

using System.Buffers.Binary;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Proc;

namespace CriuSharp.SimKernel.Selftests;

public enum CheckOutcome { Pass, Fail, Skip }

/// <summary>One numbered check of a selftest and what it saw.</summary>
public sealed record CheckResult(string Id, string Description, CheckOutcome Outcome, string? Detail = null);

/// <summary>The result of running one selftest on one kernel configuration.</summary>
public sealed record SelftestReport(string Name, string Arch, string Kernel, IReadOnlyList<CheckResult> Checks)
{
    public int Passed => Checks.Count(c => c.Outcome == CheckOutcome.Pass);
    public int Failed => Checks.Count(c => c.Outcome == CheckOutcome.Fail);
    public int Skipped => Checks.Count(c => c.Outcome == CheckOutcome.Skip);
}

/// <summary>A kernel selftest re-expressed against the simulator.</summary>
public interface ISelftest
{
    string Name { get; }
    string Description { get; }
    SelftestReport Run(KernelConfig config);
}

/// <summary>Every selftest the simulator ships, in the order the CLI lists them.</summary>
public static class SelftestCatalog
{
    private static readonly List<ISelftest> s_all = [new SoftDirty2013(), new SoftDirtySelftest(), new PagemapIoctlSelftest()];

    public static IReadOnlyList<ISelftest> All => s_all;

    internal static void Register(ISelftest t) => s_all.Add(t);

    public static ISelftest? Find(string name) => s_all.FirstOrDefault(t => t.Name == name);
}

/// <summary>
/// What a selftest binary has on Linux: a process of its own ("self"), its /proc files, and the
/// helpers of tools/testing/selftests/mm/vm_util.c, so that translations read line by line.
/// </summary>
public sealed partial class SelftestContext
{
    private readonly List<CheckResult> _checks = [];

    public SelftestContext(KernelConfig config, string comm)
    {
        Kernel = new Kernel(config);
        Self = Kernel.Spawn(comm);
    }

    public Kernel Kernel { get; }
    public SimTask Self { get; }
    public int PageSize => Kernel.Arch.PageSize;
    public ulong HugePageSize => Kernel.Arch.HugePageSize;
    public IReadOnlyList<CheckResult> Checks => _checks;

    public void Check(string id, string description, bool ok, string? detail = null) =>
        _checks.Add(new CheckResult(id, description, ok ? CheckOutcome.Pass : CheckOutcome.Fail, ok ? null : detail));

    public void Skip(string id, string description, string why) =>
        _checks.Add(new CheckResult(id, description, CheckOutcome.Skip, why));

    public SelftestReport Report(string name) =>
        new(name, Kernel.Arch.Name, Kernel.Version.Name, _checks.ToList());

    // ---- system calls of "self" ---------------------------------------------------------

    public ulong Mmap(ulong len, Prot prot, MapFlags flags, ulong addr = 0, SimFile? file = null, long offset = 0)
    {
        var r = Self.Mmap(addr, len, prot, flags, file, offset);
        return r.Ok ? (ulong)r.Value : ulong.MaxValue; // MAP_FAILED
    }

    public const ulong MapFailed = ulong.MaxValue;

    public void WriteByte(ulong va, byte value) => Self.Write(va, [value]).OrThrow($"store at {va:x}");

    public byte ReadByte(ulong va)
    {
        Span<byte> b = stackalloc byte[1];
        Self.Read(va, b).OrThrow($"load at {va:x}");
        return b[0];
    }

    public void Memset(ulong va, byte value, ulong len)
    {
        var buf = new byte[Math.Min(len, 1UL << 20)];
        Array.Fill(buf, value);
        for (ulong off = 0; off < len; off += (ulong)buf.Length)
            Self.Write(va + off, buf.AsSpan(0, (int)Math.Min((ulong)buf.Length, len - off))).OrThrow($"memset at {va + off:x}");
    }

    // ---- vm_util.c helpers --------------------------------------------------------------

    /// <summary>pagemap_get_entry: one raw entry through the pagemap file (open, lseek, read).</summary>
    public ulong PagemapGetEntry(ulong va, string file = "pagemap")
    {
        Kernel.Proc.Open(Self.Pid, file, OpenMode.ReadOnly, out var f).OrThrow($"open {file}");
        f!.Lseek((long)(va / (ulong)PageSize * 8), Whence.Set).OrThrow("lseek");
        Span<byte> b = stackalloc byte[8];
        f.Read(b).OrThrow("read pagemap");
        return BinaryPrimitives.ReadUInt64LittleEndian(b);
    }

    public bool PagemapIsSoftDirty(ulong va) => (PagemapGetEntry(va) & PagemapBits.SoftDirty) != 0;
    public bool PagemapIsPresent(ulong va) => (PagemapGetEntry(va) & PagemapBits.Present) != 0;
    public bool PagemapIsSwapped(ulong va) => (PagemapGetEntry(va) & PagemapBits.Swap) != 0;

    /// <summary>clear_softdirty: write "4" to /proc/self/clear_refs.</summary>
    public void ClearSoftDirty()
    {
        Kernel.Proc.Open(Self.Pid, "clear_refs", OpenMode.WriteOnly, out var f).OrThrow("open clear_refs");
        var r = f!.Write("4"u8);
        if (!r.Ok || r.Value != 1)
            throw new KernelException(r.Error, "writing clear_refs");
    }

    /// <summary>check_for_pattern-style probe: does smaps show VM_SOFTDIRTY ("sd") for the VMA at va?</summary>
    public bool SmapsHasSoftDirtyFlag(ulong va)
    {
        string smaps = Kernel.Proc.Smaps(Self.Pid);
        string prefix = va.ToString("x8") + "-";
        int at = smaps.IndexOf("\n" + prefix, StringComparison.Ordinal);
        if (at < 0 && smaps.StartsWith(prefix, StringComparison.Ordinal)) at = -1;
        else if (at < 0) return false;
        int flags = smaps.IndexOf("VmFlags:", at + 1, StringComparison.Ordinal);
        int eol = smaps.IndexOf('\n', flags);
        return smaps[flags..eol].Contains(" sd", StringComparison.Ordinal);
    }

    /// <summary>PAGEMAP_SCAN through an open pagemap file descriptor.</summary>
    public SysResult PagemapIoctl(ref PmScanArg arg, Span<PageRegion> vec)
    {
        Kernel.Proc.Open(Self.Pid, "pagemap", OpenMode.ReadOnly, out var f).OrThrow("open pagemap");
        return f!.Ioctl(PageCategory.PagemapScanIoctl, ref arg, vec);
    }
}

/// <summary>
/// The selftest posted with the 2013 series (patch 6/5): three anonymous pages; page 0 read and
/// page 2 written; clear_refs 4; then page 0 and 1 written and page 2 read. On the 2013 kernel it
/// reads /proc/self/pagemap2; on later kernels the same checks run on /proc/self/pagemap, where the
/// VM_SOFTDIRTY flag of the fresh VMA makes page 0 and 1 read dirty before the clear (pagemap_pte_range() reports VM_SOFTDIRTY VMAs as soft-dirty).
/// </summary>
public sealed class SoftDirty2013 : ISelftest
{
    public string Name => "soft-dirty-2013";
    public string Description => "The 2013 series' own selftest: present and soft-dirty bits of 3 pages across reads, writes and clear_refs 4.";

    public SelftestReport Run(KernelConfig config)
    {
        var t = new SelftestContext(config, "soft-dirty");
        const ulong Present = PagemapBits.Present, SoftDirty = PagemapBits.SoftDirty;
        string file = t.Kernel.Version.HasPagemap2 ? "pagemap2" : "pagemap";
        if (!t.Kernel.SoftDirtySupported)
        {
            t.Skip("0", "soft-dirty support", $"{t.Kernel.Arch.Name} has no soft-dirty bit; bit 55 is never set");
        }
        ulong ps = (ulong)t.PageSize;
        ulong mem = t.Mmap(3 * ps, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous);
        bool sd = t.Kernel.SoftDirtySupported;
        ulong[] map = new ulong[3];
        void Get() { for (int i = 0; i < 3; i++) map[i] = t.PagemapGetEntry(mem + (ulong)i * ps, file); }
        void Want(int step, int page, ulong want)
        {
            if (!sd) want &= ~SoftDirty;
            t.Check($"{step}.{page}", $"step {step} page {page} has {Flags(want)}", (map[page] & want) == want,
                    $"entry {map[page]:x16} has {Flags(map[page])}");
        }

        _ = t.ReadByte(mem);
        t.WriteByte(mem + 2 * ps, (byte)'c');
        Get();
        Want(1, 0, Present);
        Want(1, 1, 0);
        Want(1, 2, Present | SoftDirty);

        t.ClearSoftDirty();
        Get();
        Want(2, 0, Present);
        Want(2, 1, 0);
        Want(2, 2, Present);
        // The original only checks that wanted bits are set; also check what the clear must remove.
        if (sd)
            t.Check("2.2c", "step 2 page 2 is no longer soft-dirty", (map[2] & SoftDirty) == 0, $"entry {map[2]:x16}");

        t.WriteByte(mem, (byte)'a');
        t.WriteByte(mem + ps, (byte)'b');
        _ = t.ReadByte(mem + 2 * ps);
        Get();
        Want(3, 0, Present | SoftDirty);
        Want(3, 1, Present | SoftDirty);
        Want(3, 2, Present);
        if (sd)
            t.Check("3.2c", "step 3 page 2 stays clean after a read", (map[2] & SoftDirty) == 0, $"entry {map[2]:x16}");
        return t.Report(Name);
    }

    private static string Flags(ulong e) =>
        $"{((e & PagemapBits.Present) != 0 ? 'p' : '-')}{((e & PagemapBits.SoftDirty) != 0 ? 'd' : '-')}";
}

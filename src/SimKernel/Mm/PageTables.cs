using System.Numerics;
using System.Runtime.CompilerServices;
using CriuSharp.SimKernel.Arch;

namespace CriuSharp.SimKernel.Mm;

/// <summary>
/// One page table: the raw entries of one PMD's worth of address space, plus two bitmaps kept in
/// step with the entries so that scans can jump straight to interesting entries:
///
///   E[i]            raw 64-bit PTE (0 = none, present, swap entry or pte marker)
///   SoftDirty bit i entry carries soft-dirty itself (present SD bit or swap SD bit)
///   UffdWp bit i    entry carries uffd-wp (present bit, swap bit, or an uffd-wp marker)
///
/// Every change of an entry's soft-dirty or uffd-wp state goes through <see cref="PageTables.Set"/>.
/// Setting hardware accessed/dirty bits on a store may write E[i] directly: it changes neither.
/// </summary>
public sealed class PteTable
{
    public readonly ulong[] E;
    public readonly ulong[] SoftDirty;
    public readonly ulong[] UffdWp;
    public int Used;

    public PteTable(int entries)
    {
        E = new ulong[entries];
        SoftDirty = new ulong[(entries + 63) / 64];
        UffdWp = new ulong[(entries + 63) / 64];
    }
}

/// <summary>
/// A PMD table: per slot either a huge (PMD-mapped) entry or a page table. <see cref="Entries"/>
/// mirrors each page table's entry array so that the store path reaches an entry with one
/// dependent load fewer; page tables are attached and detached only through <see cref="SetTable"/>.
/// </summary>
public sealed class PmdTable
{
    public readonly ulong[] Huge;
    public readonly PteTable?[] Pte;
    public readonly ulong[]?[] Entries;

    public PmdTable(int entries)
    {
        Huge = new ulong[entries];
        Pte = new PteTable?[entries];
        Entries = new ulong[]?[entries];
    }

    public void SetTable(int slot, PteTable? t)
    {
        Pte[slot] = t;
        Entries[slot] = t?.E;
    }
}

/// <summary>
/// The page-table tree of one address space:
///   pgd[i >> 9] → pud[i &amp; 511] → PmdTable, where i = va >> topShift (one PmdTable per
///   <c>2^(pmdShift+9)</c> bytes) → slot[(va >> pmdShift) &amp; 511] → Huge entry, or
///   PteTable → E[(va >> pageShift) &amp; (ptrs-1)]. The upper levels are allocated on demand, so an
///   address space costs a few KiB however large its user range is.
/// </summary>
public sealed partial class PageTables
{
    public const int PmdIndexBits = 9;
    private readonly ArchProfile _arch;
    private readonly int _pageShift;
    private readonly int _pmdShift;
    private readonly int _topShift;
    private readonly int _ptrs;
    private readonly PmdTable?[]?[] _pgd;
    private readonly ulong _topEntries;

    public PageTables(ArchProfile arch)
    {
        _arch = arch;
        _pageShift = arch.PageShift;
        _pmdShift = arch.PmdShift;
        _topShift = _pmdShift + PmdIndexBits;
        _ptrs = arch.PtrsPerTable;
        _topEntries = (arch.TaskSize + (1UL << _topShift) - 1) >> _topShift;
        _pgd = new PmdTable?[]?[(int)((_topEntries + 511) >> 9)];
    }

    public ArchProfile Arch => _arch;
    public int PmdShift => _pmdShift;
    // The walk's parameters, for the batched store path (MmStruct.FastWalk).
    internal PmdTable?[]?[] Pgd => _pgd;
    internal int TopShift => _topShift;
    internal ulong TopEntries => _topEntries;
    internal int PageShift => _pageShift;
    internal int EntriesPerTable => _ptrs;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public PmdTable? PmdTableFor(ulong va)
    {
        ulong i = va >> _topShift;
        if (i >= _topEntries)
            return null;
        var pud = _pgd[i >> 9];
        return pud?[i & 511];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int PmdIndex(ulong va) => (int)((va >> _pmdShift) & ((1UL << PmdIndexBits) - 1));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int PteIndex(ulong va) => (int)((va >> _pageShift) & (ulong)(_ptrs - 1));

    public PmdTable EnsurePmdTable(ulong va)
    {
        ulong i = va >> _topShift;
        var pud = _pgd[i >> 9] ??= new PmdTable?[512];
        return pud[i & 511] ??= new PmdTable(1 << PmdIndexBits);
    }

    /// <summary>The page table covering <paramref name="va"/>, or null (none yet, or a huge entry maps it).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public PteTable? PteTableFor(ulong va)
    {
        var pmd = PmdTableFor(va);
        return pmd?.Pte[PmdIndex(va)];
    }

    public PteTable EnsurePteTable(ulong va)
    {
        var pmd = EnsurePmdTable(va);
        int i = PmdIndex(va);
        if (pmd.Pte[i] is { } t)
            return t;
        t = new PteTable(_ptrs);
        pmd.SetTable(i, t);
        return t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ulong Get(ulong va)
    {
        var t = PteTableFor(va);
        return t is null ? 0 : t.E[PteIndex(va)];
    }

    /// <summary>Stores an entry and keeps the table's bitmaps and used count in step.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public void Set(PteTable t, int i, ulong value)
    {
        ulong old = t.E[i];
        t.E[i] = value;
        if ((old == 0) != (value == 0))
            t.Used += value == 0 ? -1 : 1;
        int w = i >> 6;
        ulong bit = 1UL << (i & 63);
        if (_arch.EntrySoftDirty(value)) t.SoftDirty[w] |= bit; else t.SoftDirty[w] &= ~bit;
        if (_arch.HasUffdWpState(value)) t.UffdWp[w] |= bit; else t.UffdWp[w] &= ~bit;
    }

    public void Set(ulong va, ulong value) => Set(EnsurePteTable(va), PteIndex(va), value);

    /// <summary>Visits every PMD slot that has a page table or a huge entry in [start, end).</summary>
    public IEnumerable<(ulong Base, PmdTable Table, int Slot)> Slots(ulong start, ulong end)
    {
        ulong pmdSize = 1UL << _pmdShift;
        ulong va = start & ~(pmdSize - 1);
        while (va < end)
        {
            var pmd = PmdTableFor(va);
            if (pmd is null)
            {
                ulong topSize = 1UL << _topShift;
                va = (va & ~(topSize - 1)) + topSize;
                continue;
            }
            int s = PmdIndex(va);
            if (pmd.Huge[s] != 0 || pmd.Pte[s] is not null)
                yield return (va, pmd, s);
            va += pmdSize;
        }
    }

    /// <summary>Number of set bits of a table bitmap in entry range [from, to).</summary>
    public static int CountBits(ulong[] bitmap, int from, int to)
    {
        int n = 0;
        for (int i = from; i < to;)
        {
            int w = i >> 6, b = i & 63;
            int take = Math.Min(64 - b, to - i);
            ulong mask = (take == 64 ? ulong.MaxValue : ((1UL << take) - 1)) << b;
            n += BitOperations.PopCount(bitmap[w] & mask);
            i += take;
        }
        return n;
    }
}

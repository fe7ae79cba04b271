using System.Runtime.InteropServices;
using CriuSharp.SimKernel.Mm;

namespace CriuSharp.SimKernel.Workloads;

/// <summary>
/// Address-space churn. The data mapping is cut into slots; the arena reserves twice its size so
/// slot i lives at position 0 or 1: <c>arena + (2i + pos) × slot</c>. Each op picks a slot and
///   write    stamps a page (as <see cref="Stamped"/>), or makes a read-only slot writable again
///   remap    munmap + mmap again at the same address (the soft-dirty document's case): zeros
///   move     mremap MAYMOVE|FIXED to the slot's other position: contents travel
///   mprotect toggles read-only / read-write
///   dontneed MADV_DONTNEED: zeros
/// The control mapping holds the stamp ledger (a word per page) and a descriptor per slot
/// (position, read-only, check bits), so the self-check knows where each slot must be, with which
/// protection, which pages must be zero and which must carry which stamp.
/// </summary>
internal static class Churn
{
    public static readonly string[] WeightNames = ["write", "remap", "move", "mprotect", "dontneed"];
    private const ulong PosBit = 1, ReadOnlyBit = 2;

    private static ulong Descriptor(ulong seed, ulong slot, ulong state) =>
        (Rng.Mix(seed ^ 0x243F6A8885A308D3UL ^ (slot << 8) ^ state) & ~0xFFUL) | state;

    private static ulong SlotAddr(ulong arena, ulong slot, ulong slotBytes, ulong pos) => arena + (2 * slot + pos) * slotBytes;

    /// <summary>Maps slot positions 0 of an arena reserved at <paramref name="addr"/> (0: kernel chooses).</summary>
    public static SysResult MapArena(SimTask task, RegionImage data, ulong slotBytes, ulong addr)
    {
        // Reserve 2× with one mapping (the kernel finds the room), then punch out the odd positions.
        var flags = MapFlags.Private | MapFlags.Anonymous | (addr != 0 ? MapFlags.FixedNoReplace : 0);
        var r = task.Mmap(addr, 2 * data.Size, (Prot)data.Prot, flags);
        if (!r.Ok)
            return r;
        ulong arena = (ulong)r.Value;
        for (ulong s = 0; s < data.Size / slotBytes; s++)
            task.Munmap(SlotAddr(arena, s, slotBytes, 1), slotBytes).OrThrow("churn arena");
        return r;
    }

    public static void Init(SimTask task, ProgramImage prog)
    {
        var r = task.Registers;
        ulong ps = (ulong)task.Kernel.Arch.PageSize;
        ulong pages = prog.Regions[prog.Data].Size / ps;
        ulong slots = pages / prog.SlotPages;
        ulong ctl = r[Regs.RegionBase + prog.Ledger];
        for (ulong s = 0; s < slots; s++)
            task.StoreU64(ctl + (pages + s) * 8, Descriptor(prog.Seed, s, 0));
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static long Run(SimTask task, ProgramImage prog, long n, bool countOwed)
    {
        var cpu = new Stamped.Cpu(task, prog, countOwed);
        var r = cpu.R;
        int shift = cpu.PageShift;
        ulong ps = 1UL << shift;
        ulong arena = r[Regs.RegionBase + prog.Data];
        ulong pages = prog.Regions[prog.Data].Size >> shift;
        ulong slotPages = prog.SlotPages;
        ulong slotBytes = slotPages << shift;
        ulong slots = pages / slotPages;
        ulong descBase = cpu.LedgerBase + pages * 8;
        var w = prog.Weights;
        ulong total = (ulong)(w[0] + w[1] + w[2] + w[3] + w[4]);
        long done = 0;
        for (; done < n; done++)
        {
            ulong slot = cpu.Rng.Below(slots);
            ulong pick = cpu.Rng.Below(total);
            ulong dva = descBase + slot * 8;
            if (!task.LoadU64(dva, out ulong desc))
                break;
            ulong state = desc & 0xFF;
            ulong at = SlotAddr(arena, slot, slotBytes, state & PosBit);
            bool ok = true;
            ulong newState = state;
            if (pick < (ulong)w[0])
            {
                if ((state & ReadOnlyBit) != 0)
                {
                    ok = task.Mprotect(at, slotBytes, Prot.Read | Prot.Write).Ok;
                    newState &= ~ReadOnlyBit;
                }
                else
                {
                    ulong j = cpu.Rng.Below(slotPages);
                    ok = cpu.Write(slot * slotPages + j, at + (j << shift));
                }
            }
            else if ((pick -= (ulong)w[0]) < (ulong)w[1])
            {
                // munmap and mmap again at the same address: new, empty memory in the old place.
                ok = task.Munmap(at, slotBytes).Ok
                     && task.Mmap(at, slotBytes, Prot.Read | Prot.Write, MapFlags.Private | MapFlags.Anonymous | MapFlags.Fixed).Ok
                     && ForgetSlot(ref cpu, slot, slotPages);
                newState &= ~ReadOnlyBit;
            }
            else if ((pick -= (ulong)w[1]) < (ulong)w[2])
            {
                ulong to = SlotAddr(arena, slot, slotBytes, (state & PosBit) ^ 1);
                ok = task.Mremap(at, slotBytes, slotBytes, MremapFlags.MayMove | MremapFlags.Fixed, to).Ok;
                newState ^= PosBit;
            }
            else if ((pick -= (ulong)w[2]) < (ulong)w[3])
            {
                bool ro = (state & ReadOnlyBit) != 0;
                ok = task.Mprotect(at, slotBytes, ro ? Prot.Read | Prot.Write : Prot.Read).Ok;
                newState ^= ReadOnlyBit;
            }
            else
            {
                ok = task.Madvise(at, slotBytes, Madvise.DontNeed).Ok && ForgetSlot(ref cpu, slot, slotPages);
            }
            if (ok && newState != state)
                ok = task.StoreU64(dva, Descriptor(prog.Seed, slot, newState));
            if (!ok)
            {
                if (task.Alive && r[Regs.Failure] == 0)
                {
                    r[Regs.Failure] = cpu.Pc + 1;
                    r[Regs.FailureDetail] = at;
                }
                break;
            }
            cpu.Retire();
        }
        cpu.Flush();
        return done;
    }

    private static bool ForgetSlot(ref Stamped.Cpu cpu, ulong slot, ulong slotPages)
    {
        for (ulong j = 0; j < slotPages; j++)
            if (!cpu.Forget(slot * slotPages + j))
                return false;
        return true;
    }

    public static VerifyReport Verify(SimTask task, ProgramImage prog)
    {
        var r = task.Registers;
        var check = new PageChecker(task);
        var mm = task.Mm;
        int shift = task.Kernel.Arch.PageShift;
        ulong ps = 1UL << shift;
        ulong arena = r[Regs.RegionBase + prog.Data];
        ulong pages = prog.Regions[prog.Data].Size >> shift;
        ulong slotPages = prog.SlotPages;
        ulong slotBytes = slotPages << shift;
        ulong slots = pages / slotPages;
        ulong ctl = r[Regs.RegionBase + prog.Ledger];
        ulong ctlSize = prog.Regions[prog.Ledger].Size;
        ulong key = prog.Seed;
        int wordBits = shift - 3;

        var ctlBytes = new byte[ctlSize];
        for (ulong off = 0; off < ctlSize; off += ps)
            check.ReadPage(ctl + off, ctlBytes.AsSpan((int)off, (int)ps));
        var words = MemoryMarshal.Cast<byte, ulong>(ctlBytes);
        ulong digest = 0;
        var bad = new bool[pages];
        for (ulong p = 0; p < pages; p++)
        {
            ulong lw = words[(int)p];
            digest += lw;
            if (lw != Stamped.LedgerWord(key, p, lw & Stamped.StampMask))
            {
                check.Bad(ctl + p * 8, $"ledger word {p} is 0x{lw:x16}, not a valid stamp");
                bad[(int)p] = true; // the ledger is the culprit; its page is not judged against it
            }
        }
        for (ulong i = pages + slots; i < ctlSize / 8; i++)
            if (words[(int)i] != 0)
                check.Bad(ctl + i * 8, "bytes after the descriptors are not zero");

        var buf = check.Buffer;
        var bw = MemoryMarshal.Cast<byte, ulong>(buf.AsSpan());
        for (ulong s = 0; s < slots; s++)
        {
            ulong desc = words[(int)(pages + s)];
            ulong state = desc & 0xFF;
            if (state > 3 || desc != Descriptor(key, s, state))
            {
                check.Bad(ctl + (pages + s) * 8, $"descriptor of slot {s} is damaged");
                continue;
            }
            ulong at = SlotAddr(arena, s, slotBytes, state & PosBit);
            ulong alt = SlotAddr(arena, s, slotBytes, (state & PosBit) ^ 1);
            if (!mm.RangeFree(alt, alt + slotBytes))
                check.Bad(alt, $"slot {s} should have left 0x{alt:x}, but something is mapped there");
            bool ro = (state & ReadOnlyBit) != 0;
            for (ulong j = 0; j < slotPages; j++)
            {
                ulong p = s * slotPages + j;
                ulong va = at + (j << shift);
                check.Count++;
                var vma = mm.Find(va);
                if (vma is null)
                {
                    check.Bad(va, $"slot {s} page {j} is not mapped");
                    continue;
                }
                if (vma.CanWrite == ro || !vma.CanRead || vma.File is not null)
                {
                    check.Bad(va, $"slot {s} page {j} has protection {vma.Protection}, expected {(ro ? "read-only" : "read-write")} private anonymous");
                    continue;
                }
                if (bad[(int)p])
                    continue;
                check.ReadPage(va, buf);
                ulong stamp = words[(int)p] & Stamped.StampMask;
                int wi = (int)(Stamped.Offset(p, wordBits) >> 3);
                ulong expect = Stamped.DataWord(key, p, stamp);
                if (bw[wi] != expect)
                {
                    check.Bad(va, stamp == 0
                        ? $"slot {s} page {j} must be zero (unmapped, remapped or DONTNEED since its last write) but holds 0x{bw[wi]:x16}"
                        : $"slot {s} page {j}: stamp word 0x{bw[wi]:x16}, expected 0x{expect:x16} for stamp {stamp}");
                    continue;
                }
                bw[wi] = 0;
                if (buf.AsSpan().IndexOfAnyExcept((byte)0) is var nz && nz >= 0)
                    check.Bad(va, $"slot {s} page {j}: byte {nz} is 0x{buf[nz]:x2}, expected 0");
            }
        }
        if (check.FirstBad is null && digest != r[Regs.Digest])
            check.Bad(ctl, "ledger sum differs from the register's: the ledger and its data are from another point in time");
        return check.Report(task, "churn");
    }
}

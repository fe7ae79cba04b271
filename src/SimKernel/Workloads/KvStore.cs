using System.Runtime.InteropServices;

namespace CriuSharp.SimKernel.Workloads;

/// <summary>
/// A hash table in simulated memory: open addressing with linear probing and backward-shift
/// deletion (no tombstones, so the table never degrades). Layout of the mapping:
///
///   page 0   header: magic, capacity, count, digest, ops, check; the rest of the page zero
///   page 1.. slots of 64 bytes: key (0 = empty), version, five value words, check
///
/// Values derive from (key, version); the check word covers key, version and values; the
/// header's digest is the sum of a hash of every (key, version) present, and its ops counter must
/// equal the program counter. A self-check therefore finds a corrupted byte in any slot or in
/// the header, a lost or stale slot (digest), a stale header (ops), and broken probe chains.
/// </summary>
internal static class KvStore
{
    private const ulong Magic = 0x3152_4F54_5356_4B53; // "SKVSTOR1"
    private const int SlotBytes = 64;
    private const int SlotWords = 8;
    private const int HMagic = 0, HCapacity = 1, HCount = 2, HDigest = 3, HOps = 4, HCheck = 5;

    public static ulong Capacity(ulong regionBytes, ulong pageSize) => (regionBytes - pageSize) / SlotBytes;

    private static ulong Home(ulong seed, ulong key, ulong cap) => Math.BigMul(Rng.Mix(key ^ seed ^ 0x6A09E667F3BCC908UL), cap, out _);
    private static ulong Value(ulong seed, ulong key, ulong version, int j) => Rng.Mix(seed ^ (key * 0xBB67AE8584CAA73BUL) ^ (version * 0x3C6EF372FE94F82BUL) ^ (ulong)j);
    private static ulong Check(ulong seed, ulong key, ulong version, ulong valueSum) => Rng.Mix(~seed ^ key ^ Rng.Mix(version ^ valueSum));
    private static ulong EntryHash(ulong seed, ulong key, ulong version) => Rng.Mix(seed + key * 0xA54FF53A5F1D36F1UL + version);
    private static ulong HeaderCheck(ulong seed, ulong cap, ulong count, ulong digest, ulong ops) =>
        Rng.Mix(seed ^ Magic ^ Rng.Mix(cap ^ Rng.Mix(count ^ Rng.Mix(digest ^ Rng.Mix(ops)))));

    private ref struct Table
    {
        public SimTask Task;
        public ulong Seed, Base, Slots, Cap;

        public readonly ulong SlotVa(ulong i) => Slots + i * SlotBytes;

        public readonly bool Key(ulong i, out ulong key) => Task.LoadU64(SlotVa(i), out key);

        /// <summary>Writes a whole entry: values, check, then version and key.</summary>
        public readonly bool Put(ulong i, ulong key, ulong version)
        {
            ulong va = SlotVa(i);
            ulong sum = 0;
            for (int j = 0; j < 5; j++)
            {
                ulong v = Value(Seed, key, version, j);
                sum += v;
                if (!Task.StoreU64(va + 16 + (ulong)j * 8, v))
                    return false;
            }
            return Task.StoreU64(va + 56, Check(Seed, key, version, sum))
                && Task.StoreU64(va + 8, version)
                && Task.StoreU64(va, key);
        }

        public readonly bool Move(ulong from, ulong to)
        {
            ulong s = SlotVa(from), d = SlotVa(to);
            for (ulong w = 0; w < SlotWords; w++)
                if (!Task.LoadU64(s + w * 8, out ulong v) || !Task.StoreU64(d + w * 8, v))
                    return false;
            return true;
        }

        public readonly bool Clear(ulong i)
        {
            ulong va = SlotVa(i);
            for (ulong w = 0; w < SlotWords; w++)
                if (!Task.StoreU64(va + w * 8, 0))
                    return false;
            return true;
        }
    }

    public static void Init(SimTask task, ProgramImage prog)
    {
        ulong b = task.Registers[Regs.RegionBase + prog.Data];
        ulong cap = Capacity(prog.Regions[prog.Data].Size, (ulong)task.Kernel.Arch.PageSize);
        task.StoreU64(b + HMagic * 8, Magic);
        task.StoreU64(b + HCapacity * 8, cap);
        task.StoreU64(b + HCheck * 8, HeaderCheck(prog.Seed, cap, 0, 0, 0));
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static long Run(SimTask task, ProgramImage prog, long n, bool countOwed)
    {
        var r = task.Registers;
        var rng = Rng.Load(r);
        ulong b = r[Regs.RegionBase + prog.Data];
        var t = new Table
        {
            Task = task, Seed = prog.Seed, Base = b, Slots = b + (ulong)task.Kernel.Arch.PageSize,
            Cap = Capacity(prog.Regions[prog.Data].Size, (ulong)task.Kernel.Arch.PageSize),
        };
        long done = 0;
        for (; done < n; done++)
        {
            if (!task.LoadU64(b + HCount * 8, out ulong count) || !task.LoadU64(b + HDigest * 8, out ulong digest))
                break;
            ulong key = rng.Below(prog.Keys) + 1;
            bool read = rng.Chance(prog.ReadShare);
            bool delete = rng.Chance(prog.DeleteShare);
            // Probe from the key's home slot to the key or the first empty slot.
            ulong i = Home(prog.Seed, key, t.Cap), k = 0;
            bool ok = true;
            for (ulong probes = 0; probes < t.Cap; probes++)
            {
                if (!(ok = t.Key(i, out k)) || k == key || k == 0)
                    break;
                i = i + 1 == t.Cap ? 0 : i + 1;
            }
            if (!ok)
                break;
            bool found = k == key;
            if (found)
            {
                if (!task.LoadU64(t.SlotVa(i) + 8, out ulong version))
                    break;
                if (read)
                {
                    // A lookup checks the entry it finds, as the application would notice garbage.
                    if (!task.LoadU64(t.SlotVa(i) + 16, out ulong v0))
                        break;
                    if (v0 != Value(prog.Seed, key, version, 0) && r[Regs.Failure] == 0)
                    {
                        r[Regs.Failure] = r[Regs.Pc] + 1;
                        r[Regs.FailureDetail] = t.SlotVa(i);
                    }
                }
                else if (delete)
                {
                    digest -= EntryHash(prog.Seed, key, version);
                    count--;
                    if (!Delete(ref t, i))
                        break;
                }
                else
                {
                    digest += EntryHash(prog.Seed, key, version + 1) - EntryHash(prog.Seed, key, version);
                    if (!t.Put(i, key, version + 1))
                        break;
                }
            }
            else if (!read && !delete)
            {
                if (!t.Put(i, key, 1))
                    break;
                digest += EntryHash(prog.Seed, key, 1);
                count++;
            }
            ulong ops = r[Regs.Pc] + 1;
            if (!task.StoreU64(b + HCount * 8, count) || !task.StoreU64(b + HDigest * 8, digest)
                || !task.StoreU64(b + HOps * 8, ops) || !task.StoreU64(b + HCheck * 8, HeaderCheck(prog.Seed, t.Cap, count, digest, ops)))
                break;
            r[Regs.Pc] = ops;
            if (countOwed)
                r[Regs.Owed]--;
        }
        rng.Store(r);
        return done;
    }

    /// <summary>Backward-shift deletion (Knuth 6.4, Algorithm R): later entries of the cluster move up.</summary>
    private static bool Delete(ref Table t, ulong hole)
    {
        ulong j = hole;
        while (true)
        {
            j = j + 1 == t.Cap ? 0 : j + 1;
            if (!t.Key(j, out ulong k))
                return false;
            if (k == 0)
                break;
            ulong h = Home(t.Seed, k, t.Cap);
            // The entry at j may stay only if its home lies cyclically in (hole, j].
            bool stays = hole <= j ? hole < h && h <= j : hole < h || h <= j;
            if (stays)
                continue;
            if (!t.Move(j, hole))
                return false;
            hole = j;
        }
        return t.Clear(hole);
    }

    public static VerifyReport Verify(SimTask task, ProgramImage prog)
    {
        var check = new PageChecker(task);
        var r = task.Registers;
        ulong ps = (ulong)task.Kernel.Arch.PageSize;
        ulong b = r[Regs.RegionBase + prog.Data];
        ulong size = prog.Regions[prog.Data].Size;
        ulong cap = Capacity(size, ps);
        ulong seed = prog.Seed;
        var bytes = new byte[size];
        for (ulong off = 0; off < size; off += ps)
            check.ReadPage(b + off, bytes.AsSpan((int)off, (int)ps));
        check.Count = (long)(size / ps);
        var w = MemoryMarshal.Cast<byte, ulong>(bytes);

        ulong hCount = w[HCount], hDigest = w[HDigest], hOps = w[HOps];
        if (w[HMagic] != Magic || w[HCapacity] != cap || w[HCheck] != HeaderCheck(seed, cap, hCount, hDigest, hOps))
            check.Bad(b, "the table header is damaged (magic, capacity or check word)");
        else if (hOps != r[Regs.Pc])
            check.Bad(b, $"the header records {hOps} operations, the program counter {r[Regs.Pc]}: a stale header page");
        for (int i = HCheck + 1; i < (int)(ps / 8); i++)
            if (w[i] != 0)
                check.Bad(b + (ulong)i * 8, $"header word {i} is 0x{w[i]:x}, expected 0");

        int slot0 = (int)(ps / 8);
        var seen = new bool[prog.Keys + 1];
        ulong count = 0, digest = 0;
        for (ulong i = 0; i < cap; i++)
        {
            var s = w.Slice(slot0 + (int)i * SlotWords, SlotWords);
            ulong va = b + ps + i * SlotBytes;
            ulong key = s[0];
            if (key == 0)
            {
                // A damaged slot whose key reads 0 still counts as occupied for the probe checks
                // below, so the damage is reported here and not at some other key's slot.
                if (s.IndexOfAnyExcept(0UL) >= 0)
                    check.Bad(va, $"empty slot {i} holds non-zero bytes");
                continue;
            }
            ulong version = s[1];
            ulong sum = 0;
            bool valuesOk = true;
            for (int j = 0; j < 5; j++)
            {
                sum += s[2 + j];
                valuesOk &= s[2 + j] == Value(seed, key, version, j);
            }
            if (key > prog.Keys || version == 0 || !valuesOk || s[7] != Check(seed, key, version, sum))
            {
                check.Bad(va, $"slot {i} (key {key}, version {version}) fails its checksum");
                continue;
            }
            if (seen[key])
                check.Bad(va, $"key {key} is stored twice (slot {i})");
            seen[key] = true;
            count++;
            digest += EntryHash(seed, key, version);
            // Linear probing: no empty slot between the key's home and where it sits.
            for (ulong h = Home(seed, key, cap); h != i; h = h + 1 == cap ? 0 : h + 1)
            {
                if (w.Slice(slot0 + (int)h * SlotWords, SlotWords).IndexOfAnyExcept(0UL) < 0)
                {
                    check.Bad(va, $"key {key} in slot {i} is unreachable: slot {h} on its probe path is empty");
                    break;
                }
            }
        }
        for (ulong i = ps / 8 + cap * SlotWords; i < size / 8; i++)
            if (w[(int)i] != 0)
                check.Bad(b + i * 8, "bytes after the last slot are not zero");
        if (check.FirstBad is null && (count != hCount || digest != hDigest))
            check.Bad(b, $"the table holds {count} entries (digest 0x{digest:x}), the header says {hCount} (0x{hDigest:x}): entries lost or stale");
        return check.Report(task, "kvstore");
    }
}
